"""TensorBoard's Backprop tab: its routes' numbers against autograd and a manual SGD step,
its refusals, and the tab in a real TensorBoard process."""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.plugins.base_plugin import TBContext
from werkzeug.test import Client
from werkzeug.wrappers import Response

from handprop.board import digits as D
from handprop.board import engine
from handprop.board.plugin import MAX_BODY, BackpropPlugin
from handprop.board.runs import RunCache, find_runs
from handprop.callbacks.snapshots import thinned
from handprop.checkpoint import model_from_checkpoint, read_checkpoint
from handprop.functional import ACTIVATIONS, COSTS
from handprop.predict import load_image, to_mnist

from board_runs import DEFAULT, LESSON, make_run


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logdir")
    make_run(root / "lesson", LESSON)
    make_run(root / "default", DEFAULT, lr=0.1)
    return root


def client(logdir) -> Client:
    plugin = BackpropPlugin(TBContext(logdir=str(logdir)))
    apps = plugin.get_plugin_apps()

    def app(environ, start_response):
        return apps[environ["PATH_INFO"]](environ, start_response)

    return Client(app, Response)


def post(logdir, route: str, **body):
    response = client(logdir).post(f"/{route}", data=json.dumps(body), content_type="application/json")
    return response.status_code, response.get_json()


def reference(run: Path, epoch: int, pixels: torch.Tensor, target: int):
    """The same network in plain torch ops, float64, differentiated by autograd: every
    layer's activations (their gradients kept), every parameter, and the cost."""
    model = model_from_checkpoint(read_checkpoint(run / "backprop" / f"epoch{epoch:04d}.pt")).double()
    params = [p.detach().clone().requires_grad_() for p in model.net.weights_and_biases()]
    a, acts = model.normalize(pixels[None].double()), []
    for (w, b), name in zip(zip(params[::2], params[1::2]), model.net.activations):
        a = ACTIVATIONS[name].fn(a @ w.T + b)
        a.retain_grad()
        acts.append(a)
    hp = model.hparams
    cost = COSTS[hp.loss].reference(a, torch.tensor([target]), hp.label_smoothing)
    cost.backward()
    return acts, params, cost.detach()


@pytest.mark.parametrize("run", ["lesson", "default"])
@pytest.mark.parametrize("layer", [0, 1])
def test_nudges_and_weight_changes_are_autograd_s(logdir, run, layer):
    status, got = post(logdir, "explain", run=run, snapshot=2, digit=7, target=3, layer=layer, neuron=5)
    assert status == 200, got
    pixels = D.run_digits(logdir / run / "backprop")["val_images"][7].double().flatten() / 255
    acts, params, cost = reference(logdir / run, 2, pixels, 3)
    assert got["cost"] == pytest.approx(cost.item(), rel=1e-12)
    for mine, theirs in zip(got["layers"], acts):
        np.testing.assert_allclose(mine["a"], theirs[0].detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(mine["nudge"], -theirs.grad[0].numpy(), rtol=1e-9, atol=1e-15)
    n = got["neuron"]
    np.testing.assert_allclose(n["weight_change"], -params[2 * layer].grad[5].numpy(), rtol=1e-9, atol=1e-15)
    assert n["bias_change"] == pytest.approx(-float(params[2 * layer + 1].grad[5]), rel=1e-9, abs=1e-15)
    assert n["from_above"]["sum"] == pytest.approx(n["nudge"], rel=1e-9, abs=1e-15)  # the sum of the nudges above
    ranked = [abs(got["layers"][layer]["passed_on"][j]) for j in got["layers"][layer]["order"]]
    assert ranked == sorted(ranked, reverse=True)


def test_the_lesson_networks_output_is_raw_and_its_desired_output_one_hot(logdir):
    _, got = post(logdir, "explain", run="lesson", snapshot=2, digit=0)
    assert got["network"]["reads"] == "output activation" and not got["network"]["normalize"]
    assert got["output"]["read"] == got["layers"][-1]["a"]  # the sigmoid outputs themselves, not rescaled
    label = got["label"]
    assert got["target"] == label and got["output"]["desired"] == [float(k == label) for k in range(10)]
    np.testing.assert_allclose(
        got["layers"][-1]["nudge"], np.subtract(got["output"]["desired"], got["output"]["read"]), rtol=1e-12
    )


@pytest.mark.parametrize("run, lr", [("lesson", 0.5), ("default", 0.02)])
def test_one_step_is_a_manual_sgd_step(logdir, run, lr):
    status, got = post(logdir, "step", run=run, snapshot=1, digit=4, target=2, lr=lr)
    assert status == 200, got
    kept = D.run_digits(logdir / run / "backprop")
    pixels = kept["val_images"][4].double().flatten() / 255
    batch_pixels, batch_labels = D.batch_of(kept)
    batch = (torch.cat([pixels[None], batch_pixels[1:]]), torch.cat([torch.tensor([2]), batch_labels[1:]]))
    assert got["batch"]["size"] == 10 and got["batch"]["labels"][0] == 2
    for name, (xs, ys) in {"digit": (pixels[None], torch.tensor([2])), "batch": batch}.items():
        model = model_from_checkpoint(read_checkpoint(logdir / run / "backprop" / "epoch0001.pt")).double()
        params = model.net.weights_and_biases()
        model.net.backward = "autograd"  # PyTorch's own gradient, for the manual step
        grads = torch.autograd.grad(model.output_and_loss(xs, ys)[1], params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
            read = COSTS[model.hparams.loss].read(model(pixels[None]))[0]
            assert got[name]["cost_after"] == pytest.approx(float(model.output_and_loss(xs, ys)[1]), rel=1e-9)
        np.testing.assert_allclose(got[name]["read_after"], read.numpy(), rtol=1e-9, atol=1e-15)
    assert got["digit"]["digit_cost_after"] < got["digit"]["digit_cost_before"]  # a small step down this digit's cost


def test_check_the_math_agrees(logdir):
    status, got = post(logdir, "check", run="default", snapshot=2, digit=1)
    assert status == 200 and got["agree"] and [r["name"] for r in got["rows"]] == ["W1", "b1", "W2", "b2", "W3", "b3"]


def test_the_canvas_is_read_as_predict_py_reads_the_same_image(tmp_path):
    ink = load_image_digit()
    path = tmp_path / "drawn.png"
    Image.fromarray(ink).save(path)
    canvas = {"width": ink.shape[1], "height": ink.shape[0], "grey": ink.flatten().tolist()}
    pixels, label = D.digit_from_request({"canvas": canvas}, None)
    assert label is None
    assert torch.equal(pixels.float(), to_mnist(load_image(path))[0].flatten())


def load_image_digit() -> np.ndarray:
    """A digit as a learner draws it: dark strokes on white, 140 x 120 pixels, off-centre."""
    field = np.full((140, 120), 255, np.uint8)
    field[20:110, 30:40] = 0  # a 1 with a flag
    field[20:30, 20:40] = 30
    return field


def tree(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def bad_logdir(tmp_path):
    root = tmp_path / "logdir"
    make_run(root / "good", LESSON, epochs=1, steps=1)
    make_run(tmp_path / "outside", LESSON, epochs=1, steps=1)
    (root / "linked").symlink_to(tmp_path / "outside")
    broken = make_run(root / "broken", LESSON, epochs=1, steps=1) / "backprop"
    (broken / "epoch0001.pt").write_bytes((broken / "epoch0001.pt").read_bytes()[:300])  # truncated
    snapshot = torch.load(broken / "epoch0000.pt", weights_only=True)
    snapshot["state_dict"]["net.layers.0.weight"][0, 0] = float("nan")
    torch.save(snapshot, broken / "epoch0000.pt")
    (root / "empty").mkdir()
    outside = tmp_path / "outside" / "backprop"
    (root / "linked_backprop").mkdir()
    (root / "linked_backprop" / "backprop").symlink_to(outside)  # a run here whose backprop/ is elsewhere
    for name, target in (("linked_snapshot", "epoch0001.pt"), ("linked_digits", "digits.pt")):
        run = make_run(root / name, LESSON, epochs=1, steps=1) / "backprop"
        (run / target).unlink()
        (run / target).symlink_to(outside / target)
    reshaped = make_run(root / "reshaped", LESSON, epochs=1, steps=1) / "backprop"
    snapshot = torch.load(reshaped / "epoch0001.pt", weights_only=True)
    snapshot["state_dict"]["net.layers.1.weight"] = torch.zeros(3, 16)  # edited: no longer the network described
    torch.save(snapshot, reshaped / "epoch0001.pt")
    (root / "run:with:colons").symlink_to(root / "good", target_is_directory=True)
    return root


GOOD = {"run": "good", "snapshot": 1, "digit": 0}
BLANK = {"width": 10, "height": 10, "grey": [255] * 100}


@pytest.mark.parametrize(
    "body, message",
    [
        ({**GOOD, "run": "../outside"}, "without '..'"),
        ({**GOOD, "run": "/etc"}, "a path inside the logdir"),
        ({**GOOD, "run": "linked"}, "outside the logdir"),
        ({**GOOD, "run": "linked_backprop"}, "outside the logdir"),
        ({**GOOD, "run": "linked_snapshot"}, "backprop/epoch0001.pt links outside the run's backprop/"),
        ({**GOOD, "run": "linked_digits"}, "backprop/digits.pt links outside the run's backprop/"),
        ({**GOOD, "run": "reshaped"}, "holds a different network than the network its hyper_parameters describe"),
        ({**GOOD, "run": "a\x00b"}, "give a run as listed"),
        ({**GOOD, "run": "x" * 300}, "cannot be read (File name too long"),
        ({**GOOD, "run": "empty"}, "has no snapshots"),
        ({**GOOD, "run": "missing"}, "has no snapshots"),
        ({**GOOD, "run": None}, "no run given"),
        ({**GOOD, "snapshot": 7}, "no snapshot of epoch 7 (kept: 0, 1)"),
        ({**GOOD, "snapshot": "1"}, "give an epoch number"),
        ({**GOOD, "run": "broken"}, "is not a handprop checkpoint"),
        ({**GOOD, "run": "broken", "snapshot": 0}, "NaN or infinite"),
        ({**GOOD, "digit": 200}, "one of the run's 200 validation digits"),
        ({**GOOD, "digit": None}, "no digit given"),
        ({**GOOD, "target": 10}, "target 10: must be a digit from 0 to 9"),
        ({**GOOD, "digit": None, "canvas": {**BLANK, "grey": [255] * 99}}, "needs 100 grey levels from 0 to 255"),
        ({**GOOD, "digit": None, "canvas": {**BLANK, "width": 4000}}, "width and height must be"),
        ({**GOOD, "digit": None, "canvas": {**BLANK, "grey": [300] * 100}}, "from 0 to 255"),
        ({**GOOD, "digit": None, "canvas": {**BLANK, "grey": ["x"] * 100}}, "from 0 to 255"),
        ({**GOOD, "digit": None, "pixels": [0.5] * 783}, "a 28x28 digit row by row; got 783"),
        ({**GOOD, "digit": None, "pixels": [2.0] * 784}, "give 784 numbers from 0 to 1"),
        ({**GOOD, "digit": None, "canvas": BLANK}, "the image is blank"),
        ({**GOOD, "layer": 5, "neuron": 0}, "layer 5: must be from 0"),
        ({**GOOD, "layer": 0, "neuron": 16}, "layer 0 has neurons 0 to 15"),
    ],
)
def test_a_bad_request_gets_400_and_its_reason_and_nothing_changes(bad_logdir, body, message):
    before = tree(bad_logdir.parent)
    status, got = post(bad_logdir, "explain", **body)
    assert status == 400 and message in got["error"], got
    assert "\n" not in got["error"]  # one line, whatever the message it came from
    assert tree(bad_logdir.parent) == before


@pytest.mark.parametrize(
    "data, message",
    [(b"{not json", "not JSON"), (b"[1, 2]", "a JSON object"), (b" " * (MAX_BODY + 1), "more than the")],
)
def test_a_malformed_request_gets_400(bad_logdir, data, message):
    response = client(bad_logdir).post("/explain", data=data, content_type="application/json")
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_a_bad_step_size_and_unsafe_digits_are_refused(bad_logdir):
    status, got = post(bad_logdir, "step", **GOOD, lr=-1)
    assert (status, got) == (400, {"error": "step size -1: must be a number above 0 and at most 100"})
    digits = bad_logdir / "good" / "backprop" / "digits.pt"
    kept = torch.load(digits, weights_only=True)
    for broken, problem in [
        ({"val_images": Path}, "cannot be read"),  # a pickle naming a class: refused before it runs
        ({**kept, "val_images": kept["val_images"][:, :14]}, "val_images: not uint8 digits of 28x28"),
        ({**kept, "batch_labels": kept["batch_labels"][:3]}, "batch_labels: not one integer label per digit"),
        ({**kept, "val_labels": kept["val_labels"] + 10}, "val_labels: not digits from 0 to 9"),
        ({**kept, "learning_rate": "fast"}, "learning_rate: not a positive number"),
    ]:
        torch.save(broken, digits)
        status, got = post(bad_logdir, "explain", **GOOD)
        assert status == 400 and "backprop/digits.pt" in got["error"] and problem in got["error"], got


def test_a_run_name_with_colons_is_read_like_any_other(bad_logdir):
    assert post(bad_logdir, "explain", **{**GOOD, "run": "run:with:colons"})[0] == 200


def test_thinning_keeps_epoch_0_the_newest_and_an_even_stride():
    assert thinned(list(range(6)), 10) == [0, 1, 2, 3, 4, 5]
    assert thinned(list(range(11)), 6) == [0, 2, 4, 6, 8, 10]
    assert thinned(list(range(12)), 6) == [0, 4, 8, 11]
    assert thinned([0, 4, 8, 12, 13], 4) == [0, 8, 13]


def test_runs_are_found_and_cached_without_torch(logdir):
    assert find_runs(logdir) == ["default", "lesson"]
    script = (
        "import sys; from handprop.board.plugin import BackpropPlugin; from tensorboard.plugins.base_plugin import "
        f"TBContext; p = BackpropPlugin(TBContext(logdir={str(logdir)!r})); assert p.is_active(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_is_active_answers_from_the_cache_and_looks_again_behind_it(tmp_path, monkeypatch):
    looks = []
    monkeypatch.setattr("handprop.board.runs.find_runs", lambda logdir: looks.append(logdir) or [f"run{len(looks)}"])
    cache = RunCache(tmp_path, max_age=3600)
    assert [cache.runs() for _ in range(5)] == [["run1"]] * 5 and len(looks) == 1
    assert cache.runs(fresh=True) == ["run2"] and len(looks) == 2
    cache.max_age = 0  # stale at once: answered from the cache while a look starts in the background
    assert cache.runs() in (["run2"], ["run3"])  # (the look may have finished before the answer is read)
    for _ in range(200):
        if len(looks) >= 3:
            break
        time.sleep(0.01)
    assert len(looks) >= 3 and cache.runs()[0] != "run2"


def test_eight_parallel_requests_get_a_single_requests_answers(logdir):
    bodies = [{"run": "default", "snapshot": 2, "digit": i, "layer": 1, "neuron": i} for i in range(8)]
    alone = [post(logdir, "explain", **b) for b in bodies]
    together = [None] * 8
    engine._network.cache_clear()  # all eight load the network at once
    D._digits.cache_clear()
    app = client(logdir)

    def ask(i):
        r = app.post("/explain", data=json.dumps(bodies[i]), content_type="application/json")
        together[i] = (r.status_code, r.get_json())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone and all(status == 200 for status, _ in alone)


def test_a_run_trained_by_train_py_is_what_the_tab_reads(drawn_cfg):
    from handprop.train import train  # noqa: PLC0415 -- (the tests above run without Lightning's trainer)

    cfg = drawn_cfg("experiment=3b1b", "data.val_size=null")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    index = json.loads((run / "backprop" / "index.json").read_text())
    assert index["network"] == "784-16-16-10, sigmoid neurons, quadratic cost"
    assert [s["epoch"] for s in index["snapshots"]] == [0, 1, 2] and index["snapshots"][2]["step"] == 8
    assert sorted(os.listdir(run / "backprop")) == ["digits.pt", *(f"epoch000{e}.pt" for e in range(3)), "index.json"]
    kept = D.run_digits(run / "backprop")
    assert len(kept["batch_labels"]) == 10 and kept["learning_rate"] == 3.0
    status, got = post(run.parent, "explain", run=run.name, snapshot=0, digit=0)
    assert status == 200 and got["snapshot"] == {"epoch": 0, "step": 0, "val_acc": index["snapshots"][0]["val_acc"]}


def test_a_snapshots_accuracy_is_the_runs_own_validation(drawn_cfg):
    """Where the epoch validated on the whole split, the snapshot's accuracy is the run's own
    val/acc (not measured twice); the untrained network's is measured on the same digits."""
    from handprop.train import train  # noqa: PLC0415

    cfg = drawn_cfg("model.hidden=[16]", "trainer.limit_val_batches=1.0", "callbacks.pictures=null", "test=false")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    index = json.loads((run / "backprop" / "index.json").read_text())["snapshots"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert index[-1]["val_acc"] == pytest.approx(metrics["val/acc"], abs=1e-6) and 0 <= index[0]["val_acc"] <= 1
