"""The measuring tools of the benchmarks, and the memory claim they support."""

import json

import pytest
import torch
from textbook import DefaultNumpy, DefaultPlain, DefaultRaw, DefaultRecipe, NetworkPy, PlainLoop, RawMath

from handprop import functional as HF
from handprop.compose import bare_config
from handprop.nn import MLP

from bench import (
    backward_vs_autograd,
    epoch_speed,
    gemm_fraction,
    interleaved_medians,
    lightning_epochs,
    pictures_cost,
    plain_epochs,
    saved_bytes,
    torchvision_epochs,
)
from conftest import run_cli


def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(100, requires_grad=True)
    assert saved_bytes(lambda: (x * x).sum()) == 400  # x saved twice, one storage
    assert saved_bytes(lambda: x.exp().sum()) == 400  # the output
    assert saved_bytes(lambda: (x + 1).sum()) == 0


@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("activation", list(HF.ACTIVATIONS))
def test_manual_network_saves_no_more_than_the_reference(activation, dropout):
    torch.manual_seed(0)
    mlp = MLP([64, 48, 32, 10], activation, dropout=dropout)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    used = {}
    for backward in HF.BACKWARDS:
        mlp.backward = backward
        used[backward] = saved_bytes(lambda b=backward: HF.cross_entropy(mlp(x), y, 0.1, backward=b))
    assert used["manual"] <= used["autograd"]
    if dropout and HF.ACTIVATIONS[activation].saves == "output":
        assert used["manual"] < used["autograd"]  # the reference keeps f's output besides y


def test_interleaved_medians_and_a_bench_row():
    calls = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, number=2)
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())
    assert calls.count("a") == calls.count("b")
    row = backward_vs_autograd([8, 8], "default", batch=16, repeats=1)
    assert row["network"] == "784-8-8-10" and row["memory_ratio"] <= 1  # ours keeps no more than autograd


def test_epoch_runners_train_the_recipe_three_ways():

    cfg = bare_config(["model.hidden=[32]", "data.augment.rotation=0"])
    for runner in (lightning_epochs, plain_epochs):
        times, states, model = runner(cfg, 2, snapshots=True)
        assert len(times) == 2 == len(states) and all(t > 0 for t in times)
        assert not torch.equal(states[0]["net.layers.0.weight"], states[1]["net.layers.0.weight"])
    assert len(torchvision_epochs(cfg, 1)) == 1


def test_epoch_speed_takes_turns_and_reports_every_ratio():

    e = epoch_speed(epochs=2, overrides=["model.hidden=[32]"])
    assert e["epochs"] == 2
    for key in (
        "handprop_epoch_s",
        "plain_loop_epoch_s",
        "torchvision_dataloader_epoch_s",
        "handprop_loader_epoch_s",
        "torchvision_loader_epoch_s",
    ):
        assert e[key] > 0, key  # each loop ran and was timed


def test_gemm_fraction_reports_rates():

    g = gemm_fraction(batch=64, hidden=(64, 64), repeats=1)
    assert g["step_gflops"] > 0 and g["gemm_gflops"] > 0 and 0 < g["fraction_of_gemm"]


def test_pictures_cost_times_both_runs_and_the_hooks():

    p = pictures_cost(
        [
            "model.hidden=[16]",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=4",
            "callbacks.pictures.every_n_epochs=1",
            "callbacks.pictures.descent_points=3",
        ],
        rounds=1,
    )
    assert p["with_s"] > 0 and p["without_s"] > 0, p
    assert p["inside_callbacks_s"] > 0, p  # the hooks ran, drew and were timed
    assert 0 < p["pictures_inside_s"] < p["inside_callbacks_s"] < p["with_s"], p  # the scalars' hooks too
    assert p["pictures_inside_s"] == pytest.approx(
        sum(v for k, v in p["by_hook_s"].items() if k.startswith("TensorBoardPictures."))
    )
    # each picture's methods ran and were timed by themselves, within their hooks' seconds; the lesson's
    # two are two of them
    assert set(p["by_picture_s"]) == {"backprop", "descent", "weights, confusion, mistakes", "histograms", "PNG files"}
    assert all(v > 0 for v in p["by_picture_s"].values()), p
    assert sum(p["by_picture_s"].values()) <= p["pictures_inside_s"], p
    assert p["lesson_inside_s"] == pytest.approx(p["by_picture_s"]["backprop"] + p["by_picture_s"]["descent"])
    assert 0 < p["lesson_share"] < p["pictures_share"], p


@pytest.mark.slow
def test_the_benchmark_runs_every_section(tmp_path):
    """`make bench ARGS=--quick`: each section's own code at toy sizes, so that a broken
    section fails here instead of in a user's hands (it once died on its first section)."""
    out = tmp_path / "bench.json"
    proc = run_cli("benchmarks/bench.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"batch10", "step_cost", "backward", "audit", "gemm", "epoch", "pictures", "fashion"} <= set(results)
    assert set(results["step_cost"]["us_per_step"]) == {"handprop"}
    assert results["denormals"]["step_ms_flushed"] > 0 and results["denormals"]["step_ms_denormal"] > 0
    for recipe in ("batch10", "default_recipe"):
        assert set(results[recipe]["epoch_s"]) == {"handprop", "network.py", "plain_loop", "raw_math"}
    assert {row["recipe"] for row in results["backward"]} == {"default", "plain"}
    assert all(row["step_ms_manual"] > 0 for row in results["backward"])
    assert results["audit"]["audit_ms"] > 0 and results["gemm"]["step_gflops"] > 0
    assert results["epoch"]["handprop_epoch_s"] > 0 and results["pictures"]["with_s"] > 0
    assert len(results["lesson"]["differences_s"]) == 1
    fashion = results["fashion"]["fashion_fast"]
    assert fashion["handprop"]["epochs"] == fashion["plain_loop"]["epochs"] == 1
    for line in (
        "Four loops, one epoch of experiment=nielsen_ch1",
        "Four loops, the last of 2 epochs of the default recipe",
        "One training step of experiment=nielsen_ch1 inside training_step",
        "Manual backward vs PyTorch autograd",
        "Gradient audit every 100 steps",
        "Large-MLP step",
        "One epoch of the default recipe",
        "TensorBoard pictures and scalars",
        "The lesson's two pictures (backprop and descent) off and on",
        "Fashion-MNIST",
        "AdamW step on",
    ):
        assert line in proc.stdout


def test_the_textbook_loops_compute_the_same_descent():
    """network.py's per-digit loop, the plain PyTorch loop and the raw math are one
    algorithm: from the same weights, over the same batches, they end at the same weights."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(60, 784, generator=g), torch.arange(60) % 10
    order = torch.randperm(60, generator=g)
    raw, numpy_net, plain = (cls(images, labels, seed=0) for cls in (RawMath, NetworkPy, PlainLoop))
    start = [raw.w1.clone(), raw.b1.clone(), raw.w2.clone(), raw.b2.clone()]
    numpy_net.weights = [start[0].double().numpy(), start[2].double().numpy()]
    numpy_net.biases = [start[1].double().numpy()[:, None], start[3].double().numpy()[:, None]]
    with torch.no_grad():
        for p, value in zip(plain.net.parameters(), start):
            p.copy_(value)
    for loop in (raw, numpy_net, plain):
        loop.epoch(order)
    assert not torch.equal(raw.w1, start[0])
    ends = {
        "network.py": [torch.from_numpy(numpy_net.weights[0]).float(), torch.from_numpy(numpy_net.weights[1]).float()],
        "plain_loop": [plain.net[0].weight.detach(), plain.net[2].weight.detach()],
    }
    for name, (w1, w2) in ends.items():
        torch.testing.assert_close(w1, raw.w1, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(w2, raw.w2, atol=1e-5, rtol=1e-4, msg=name)


def test_the_default_recipe_loops_compute_the_same_descent():
    """The per-digit numpy loop, the plain PyTorch loop and the raw math of the default
    recipe (AdamW on the one-cycle schedule, smoothed cross-entropy) are one algorithm:
    without dropout and augmentation, from the same weights, they end at the same weights."""
    recipe = DefaultRecipe(["model.hidden=[16]", "model.dropout=0", "data.augment=null"], epochs=2)
    recipe.epochs = [epoch[:3] for epoch in recipe.epochs]  # three steps of each epoch
    recipe.schedule = recipe.schedule[:3] + recipe.schedule[32:35]
    loops = {name: cls(recipe) for name, cls in (("numpy", DefaultNumpy), ("plain", DefaultPlain), ("raw", DefaultRaw))}
    for loop in loops.values():
        for epoch in (0, 1):
            loop.epoch(epoch)
    ends = {
        "numpy": [torch.from_numpy(w).float() for w in loops["numpy"].weights],
        "plain": [m.weight.detach() for m in loops["plain"].net if isinstance(m, torch.nn.Linear)],
        "raw": loops["raw"].params[0::2],
    }
    assert not torch.equal(ends["raw"][0], recipe.weights[0][0])
    for name in ("numpy", "plain"):
        for w, reference in zip(ends[name], ends["raw"]):
            torch.testing.assert_close(w, reference, atol=1e-5, rtol=1e-4, msg=name)
