"""Checkpoints load safely: no code runs from a file, and a wrong one is named as such."""

import pickle
from pathlib import Path

import pytest
import torch

from handprop.callbacks.checkpoints import BestCheckpoint, inside
from handprop.checkpoint import read_checkpoint
from handprop.errors import DiskFullError, HandpropError
from handprop.files import AtomicCheckpointIO, atomic_write
from handprop.train import train

from conftest import FAST, compose_config, run_cli, small_filesystem


class _Payload:
    """Unpickling this calls Path.touch(marker): code run by merely loading the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):

        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):

    out = tmp_path_factory.mktemp("run")
    train(compose_config("train", [*FAST, "model.hidden=[16]", "test=false"], out))
    return out / "checkpoints" / "last.ckpt"


def _malicious(checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    return bad, marker


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(checkpoint, tmp_path):
    bad, marker = _malicious(checkpoint, tmp_path)
    with pytest.raises(HandpropError, match="refused to load: the file holds Python objects other than tensors"):
        read_checkpoint(str(bad))
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # the proof that the payload is real: unsafe loading runs it
    assert marker.exists()


@pytest.mark.parametrize("script", ["eval.py", "train.py"])
def test_the_cli_refuses_it_too(checkpoint, tmp_path, script):
    bad, marker = _malicious(checkpoint, tmp_path)
    extra = [*FAST, "model.hidden=[16]"] if script == "train.py" else []
    proc = run_cli(script, f"ckpt_path={bad}", *extra, f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refused to load" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_checkpoint_of_another_network_names_the_shapes(checkpoint, tmp_path):

    cfg = compose_config("train", [*FAST, "model.hidden=[32]", f"ckpt_path={checkpoint}"], tmp_path)
    with pytest.raises(HandpropError) as e:
        train(cfg)
    message = str(e.value)
    assert "holds a different network than this run's network" in message
    assert "net.layers.0.weight: checkpoint (16, 784), this run's network (32, 784)" in message
    assert "model.hidden=[16]" in message  # the fix
    assert not (tmp_path / "checkpoints").exists()  # nothing written


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", r"\(cannot be read: the file is empty\)"),
        (
            b"not a checkpoint at all",
            r"\(cannot be read: not a file torch.save writes; it starts with the bytes 6e 6f 74 20\)",
        ),
        (pickle.dumps({"a": 1}), r"\(cannot be read: not a file torch.save writes: Unsupported operand 149\)"),
        ({"a": 1}, r"\(no state_dict and hyper_parameters\)"),  # torch.save'd, not ours
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, reason):
    path = tmp_path / "x.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(HandpropError, match=f"ckpt_path={path} is not a handprop checkpoint {reason}$"):
        read_checkpoint(str(path))


def test_a_truncated_checkpoint_is_named(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(HandpropError, match="is not a handprop checkpoint \\(cannot be read"):
        read_checkpoint(str(cut))


# --------------------------------------------------------------------------- confined to the run

QUICK = [*FAST, "model.hidden=[16]", "test=false", "scheduler=none"]


def test_a_checkpoint_naming_files_outside_the_run_deletes_nothing(tmp_path, caplog):
    """A last.ckpt is only data, and passes safe loading; its checkpoint callbacks' state
    named files outside the run, which Lightning deletes (recursively) when the resumed run
    saves a better checkpoint: a directory and a file here."""

    run = tmp_path / "run"
    train(compose_config("train", [*QUICK, "trainer.max_epochs=1"], run))
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "data.txt").write_text("precious")
    (tmp_path / "victim.ckpt").write_text("precious too")
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    escape = run / "checkpoints" / ".." / ".."
    for state, victim in zip(
        (s for s in ckpt["callbacks"].values() if "best_model_path" in s), ("victim", "victim.ckpt")
    ):
        evil = str(escape / victim)
        score = state["best_model_score"] if state["best_model_score"] is not None else torch.tensor(0.0)
        state.update(best_model_path=evil, kth_best_model_path=evil, last_model_path=evil, best_k_models={evil: score})
    torch.save(ckpt, last)
    read_checkpoint(last)  # it passes every safe-loading check: only strings

    with caplog.at_level("WARNING", logger="handprop.callbacks.checkpoints"):
        train(compose_config("train", [*QUICK, "trainer.max_epochs=3", f"ckpt_path={last}"], run))
    assert (tmp_path / "victim" / "data.txt").read_text() == "precious"
    assert (tmp_path / "victim.ckpt").read_text() == "precious too"
    warned = [
        r.getMessage()
        for r in caplog.records
        if "names files outside this run's checkpoint directory" in r.getMessage()
    ]
    assert len(warned) == 2 and "victim.ckpt" in " ".join(warned), warned
    resumed = torch.load(last, weights_only=True)
    for state in resumed["callbacks"].values():  # the run kept its own checkpoints afresh, inside its directory
        assert Path(state["best_model_path"]).resolve().parent == (run / "checkpoints").resolve()
        assert Path(state["best_model_path"]).is_file()


def test_restored_checkpoint_state_keeps_only_paths_inside_its_directory(tmp_path):

    folder = tmp_path / "checkpoints"
    callback = BestCheckpoint(dirpath=str(folder), monitor="val/acc", mode="max")
    inside_path, outside_path = str(folder / "epoch001.ckpt"), str(folder / ".." / "elsewhere.ckpt")
    state = {
        "dirpath": callback.dirpath,
        "best_model_score": torch.tensor(0.9),
        "best_model_path": inside_path,
        "kth_best_model_path": inside_path,
        "kth_value": torch.tensor(0.9),
        "last_model_path": "",
        "best_k_models": {inside_path: torch.tensor(0.9)},
    }
    callback.load_state_dict(dict(state))
    assert callback.best_model_path == inside_path and callback.best_k_models == {inside_path: torch.tensor(0.9)}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        callback.load_state_dict({**state, key: outside_path})
        assert callback.best_model_path == "" and callback.best_k_models == {} and callback.best_model_score is None
    callback.load_state_dict({**state, "best_k_models": {outside_path: torch.tensor(0.9)}})
    assert callback.best_k_models == {}
    callback.load_state_dict(
        {**state, "dirpath": str(tmp_path / "old")}
    )  # another run's directory: its state is not ours
    assert callback.best_model_path == "" and callback.best_k_models == {}


def test_checkpoint_io_removes_only_files_inside(tmp_path):

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert inside(folder / "a.ckpt", folder) and not inside(folder / ".." / "a.ckpt", folder)
    assert not inside(folder, folder) and not inside(folder / "x" / "a.ckpt", folder)
    (folder / "link.ckpt").symlink_to(tmp_path)
    assert not inside(folder / "link.ckpt", folder)  # a link out of the directory resolves outside it
    AtomicCheckpointIO().remove_checkpoint(folder / "link.ckpt")
    AtomicCheckpointIO().remove_checkpoint(tmp_path / "checkpoints")
    assert folder.is_dir() and (folder / "link.ckpt").is_symlink()  # a directory is never removed


# --------------------------------------------------------------------------- the same network, the same training


def test_resume_refuses_a_network_trained_with_other_settings(checkpoint, tmp_path):
    """Same shapes, another function: relu/cross-entropy weights resumed as sigmoid/quadratic
    on raw pixels trained on silently."""

    cfg = compose_config(
        "train",
        [
            *FAST,
            "model.hidden=[16]",
            "model.activation=sigmoid",
            "model.loss=quadratic",
            "model.label_smoothing=0",
            "model.normalize=false",
            f"ckpt_path={checkpoint}",
        ],
        tmp_path,
    )
    with pytest.raises(HandpropError) as e:
        train(cfg)
    message = str(e.value)
    assert "was trained with other model settings than this run's" in message
    for line in (
        "model.activation: checkpoint relu, this run sigmoid",
        "model.normalize: checkpoint True, this run False",
        "model.loss: checkpoint cross_entropy, this run quadratic",
    ):
        assert line in message
    assert not (tmp_path / "checkpoints").exists()  # refused before any work


def test_resume_with_another_schedule_is_refused_and_init_from_trains_on_fresh(tmp_path):
    """The documented advice (docs/reliability.md) for a one-cycle run that should train longer: a resume with
    scheduler=cosine (OneCycle's state loaded into a cosine schedule) or scheduler=none (the
    rate frozen at its annealed end) is refused; init_from starts a new run from the weights."""

    common = [*FAST, "model.hidden=[16]", "test=false"]
    train(compose_config("train", [*common, "trainer.max_epochs=1"], tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    for scheduler, ours in (("cosine", "CosineAnnealingLR"), ("none", "none")):
        with pytest.raises(HandpropError) as e:
            train(
                compose_config(
                    "train",
                    [*common, "trainer.max_epochs=3", f"scheduler={scheduler}", f"ckpt_path={last}"],
                    tmp_path / scheduler,
                )
            )
        assert f"scheduler: checkpoint OneCycleLR, this run {ours}" in str(e.value)
        assert f"init_from={last} (instead of ckpt_path)" in str(e.value)
    with pytest.raises(
        HandpropError, match=f"train on from these weights .* init_from={last}"
    ):  # more epochs, same schedule
        train(compose_config("train", [*common, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "more"))
    train(compose_config("train", [*common, "trainer.max_epochs=1", "scheduler=cosine"], tmp_path / "cos"))
    with pytest.raises(
        HandpropError, match="schedule ends after 4 steps but this run asks for 12"
    ):  # T_max: no crash, no silent climb
        train(
            compose_config(
                "train",
                [
                    *common,
                    "trainer.max_epochs=3",
                    "scheduler=cosine",
                    f"ckpt_path={tmp_path / 'cos' / 'checkpoints' / 'last.ckpt'}",
                ],
                tmp_path / "cos",
            )
        )

    start = tmp_path / "start.pt"
    record = ["+callbacks.record._target_=conftest.SaveWeightsAtStart", f"+callbacks.record.path={start}"]
    metrics = train(
        compose_config("train", [*common, "trainer.max_epochs=3", f"init_from={last}", *record], tmp_path / "b")
    )
    source = torch.load(last, weights_only=True)
    for key, value in source["state_dict"].items():  # the weights and the pixel statistics
        torch.testing.assert_close(torch.load(start, weights_only=True)[key], value, rtol=0, atol=0)
    assert metrics["trainer/global_step"] == 12  # a fresh counter: 3 epochs x 4 steps, not 4 + 12
    new = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert new["epoch"] == 2 and new["optimizer_states"][0]["state"][0]["step"] == 12  # a fresh optimiser
    assert new["lr_schedulers"][0]["total_steps"] == 12  # a fresh schedule of the new length
    with pytest.raises(HandpropError, match="init_from=.* and ckpt_path=.*: choose one"):
        train(compose_config("train", [*common, f"init_from={last}", f"ckpt_path={last}"], tmp_path / "c"))
    with pytest.raises(HandpropError, match="model.hidden=\\[16\\]"):  # another network is named
        train(compose_config("train", [*FAST, "model.hidden=[32]", f"init_from={last}"], tmp_path / "d"))


# --------------------------------------------------------------------------- checked before anything is built


def test_a_checkpoint_is_checked_before_anything_is_built(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    nan = dict(ckpt, state_dict={**ckpt["state_dict"]})
    nan["state_dict"]["net.layers.0.weight"] = nan["state_dict"]["net.layers.0.weight"].clone()
    nan["state_dict"]["net.layers.0.weight"][3, 5] = float("nan")
    torch.save(nan, tmp_path / "nan.ckpt")
    with pytest.raises(HandpropError, match=r"holds weights that are NaN or infinite \(net.layers.0.weight\)"):
        read_checkpoint(tmp_path / "nan.ckpt")
    # edited sizes: a billion hidden units would take 3 GB to build; refused from the meta device
    edited = dict(ckpt, hyper_parameters={**ckpt["hyper_parameters"], "hidden": [10**9]})
    torch.save(edited, tmp_path / "edited.ckpt")
    with pytest.raises(
        HandpropError,
        match=r"net.layers.0.weight: checkpoint \(16, 784\), the network its "
        r"hyper_parameters describe \(1000000000, 784\)",
    ):
        read_checkpoint(tmp_path / "edited.ckpt")
    bad = dict(ckpt, hyper_parameters={**ckpt["hyper_parameters"], "activation": "swish"})
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(HandpropError, match="its hyper_parameters do not describe a handprop network .*'swish'"):
        read_checkpoint(tmp_path / "bad.ckpt")


def test_a_file_of_zeros_is_named_without_unsafe_advice(tmp_path):
    zeros = tmp_path / "zeros.ckpt"
    zeros.write_bytes(bytes(4096))
    with pytest.raises(HandpropError) as e:
        read_checkpoint(zeros)
    assert str(e.value) == (
        f"ckpt_path={zeros} is not a handprop checkpoint (cannot be read: not a file torch.save "
        "writes; it starts with the bytes 00 00 00 00)"
    )
    assert "weights_only" not in str(e.value)
    proc = run_cli("eval.py", f"ckpt_path={zeros}", f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {e.value}"]


# --------------------------------------------------------------------------- written whole or not at all


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path):

    with small_filesystem(tmp_path / "disk", "600k") as disk:
        target = disk / "checkpoints" / "last.ckpt"
        io = AtomicCheckpointIO()
        io.save_checkpoint({"w": torch.zeros(10_000)}, target)  # 40 kB: fits
        before = target.read_bytes()
        with pytest.raises(DiskFullError) as e:
            io.save_checkpoint({"w": torch.ones(250_000)}, target)  # 1 MB: does not
        assert str(e.value).startswith(
            f"no space left on {disk / 'checkpoints'}: last.ckpt was not written (the previous one is intact)"
        )
        assert target.read_bytes() == before
        assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_ctrl_c_in_the_middle_of_a_save_stays_an_interrupt(tmp_path):
    """torch.save's zip writer turns an interrupted write into its own RuntimeError ('unexpected
    pos'); a run interrupted during an epoch's checkpoint then crashed (exit 1) instead of
    writing its interrupt checkpoint. The save hands the KeyboardInterrupt on, file intact."""
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.zeros(10)}, target)
    before = target.read_bytes()

    class Interrupted:
        def __init__(self, file):
            self.file, self.calls = file, 0

        def __getattr__(self, name):
            return getattr(self.file, name)

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return self.file.write(data)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda file: torch.save({"w": torch.ones(100_000)}, Interrupted(file)))
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
