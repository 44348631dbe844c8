"""The benchmark: every section's report and keys, the timing helper's turns, and the
loops a section compares, which must do the same work."""

import json

import pytest
import timing
import torch
from backward import saved_bytes
from epoch import lightning_epochs, plain_epochs
from textbook import DefaultNumpy, DefaultRaw, DefaultRecipe, DefaultTorchNN, NetworkPy, RawMath, TorchNN

from handprop import functional as HF
from handprop.compose import bare_config
from handprop.nn import MLP

from bench import SECTIONS, main
from conftest import run_cli

# what each section's JSON holds (make bench ARGS=--quick)
KEYS = {
    "textbook": {"batch10", "default_recipe"},
    "step_cost": {"recipe", "threads", "repeats", "us_per_step"},
    "backward": {"batch", "threads", "rows"},
    "audit": {"network", "batch", "threads", "every_n_steps", "audit_ms", "step_ms", "overhead_pct"},
    "gemm": {"network", "batch", "threads", "step_ms", "step_gflops", "gemm_gflops", "fraction_of_gemm", "gemm_size"},
    "epoch": {
        "recipe",
        "device",
        "threads",
        "epochs",
        "handprop_epoch_s",
        "handprop_samples_per_s",
        "plain_loop_epoch_s",
        "torchvision_dataloader_epoch_s",
        "speedup_vs_torchvision",
        "overhead_vs_plain_loop",
        "handprop_loader_epoch_s",
        "torchvision_loader_epoch_s",
        "loader_speedup_vs_torchvision",
        "raw_epoch_s",
    },
    "fashion": {"fashion_fast"},
    "cli": {
        "command",
        "repeats",
        "median_s",
        "min_s",
        "max_s",
        "budget_s",
        "under_budget",
        "heavy_imports",
        "help_lines",
    },
}
KEYS["board"] = {
    "runs",
    "requests",
    "over",
    "tensorboard_threads",
    "is_active_first_ms",
    "is_active_cached_p95_ms",
    "plugins_listing_p95_ms",
    "explain",
    "goal_ms",
    "torch_threads_here",
}
FOUR_LOOPS = {"handprop", "network.py", "torch.nn", "raw_math"}


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
    assert used["manual"] <= used["autograd"]  # (with dropout both keep f's output a, its mask and y = a m)


def test_the_variants_take_turns_in_reversing_order():
    calls = []
    turns = timing.take_turns({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, rounds=3)
    assert calls == list("abbaab") and turns == {"a": [1, 1, 1], "b": [2, 2, 2]}
    calls.clear()
    timing.take_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=1, first=1)
    assert calls == list("ba")  # (an odd turn, as between a Lightning fit's epochs)
    calls.clear()
    medians = timing.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 2)
    assert calls == list("aabb") + list("abbaabba")  # two warm-up calls each, then turns call by call
    assert set(medians) == {"a", "b"}
    assert timing.medians({"a": [9.0, 1.0, 3.0, 2.0]}, skip=1) == {"a": 2.0}


def test_the_thread_count_is_set_stated_and_restored():
    before = torch.get_num_threads()
    with timing.threads(1) as count:
        assert count == torch.get_num_threads() == 1
    with timing.threads() as count:
        assert count == before
    assert torch.get_num_threads() == before


def test_a_table_has_a_column_per_entry_and_a_row_per_result():
    rows = [{"name": "a", "ms": 1.25}, {"name": "bb", "ms": 10.0}]
    assert timing.table(rows, [("name", "name", "<4"), ("ms", "ms", ">6.2f")]) == (
        "name | ms\n--- | ---\na    |   1.25\nbb   |  10.00"
    )


def test_an_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--only", "epoch,pictures"])
    assert stop.value.code == 2 and "pictures" in capsys.readouterr().err


def test_the_plain_loop_does_handprops_work():
    """The epoch and Fashion-MNIST sections compare handprop under Lightning with PlainLoop:
    from the same config they train the same weights, bitwise (batch order, dropout,
    augmentation, optimiser and schedule), so the comparison is of the framework alone."""
    cfg = bare_config(["model.hidden=[16]", "data.augment.elastic=0"])
    with timing.threads(1):  # (two threads on a busy 2-core machine: many times slower)
        _, lightning, _ = lightning_epochs(cfg, 2, snapshots=True)
        _, plain, _ = plain_epochs(cfg, 2, snapshots=True)
    assert not torch.equal(lightning[0]["net.layers.0.weight"], lightning[1]["net.layers.0.weight"])
    for epoch in (0, 1):
        for key, value in lightning[epoch].items():
            assert torch.equal(value, plain[epoch][key]), (epoch, key)


@pytest.mark.slow
def test_the_benchmark_reports_every_section(tmp_path):
    """`make bench ARGS=--quick`: each section's own code at toy sizes, so that a broken
    section fails here instead of in a user's hands. Each section's JSON has its keys, and
    what it printed is its report of that JSON."""
    out = tmp_path / "bench.json"
    proc = run_cli("benchmarks/bench.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert list(results) == ["torch", "threads", *SECTIONS] and set(SECTIONS) == set(KEYS)
    for name, module in SECTIONS.items():
        assert set(results[name]) == KEYS[name], name
        assert module.report(results[name]) in proc.stdout, name
    for recipe in ("batch10", "default_recipe"):
        assert set(results["textbook"][recipe]["epoch_s"]) == FOUR_LOOPS
    assert set(results["step_cost"]["us_per_step"]) == {"handprop"}
    rows = results["backward"]["rows"]
    assert [(row["network"], row["recipe"]) for row in rows] == [("784-16-16-10", "default"), ("784-16-16-10", "plain")]
    assert all(row["memory_ratio"] <= 1 for row in rows)  # ours keeps no more than autograd
    fashion = results["fashion"]["fashion_fast"]
    assert fashion["handprop"]["epochs"] == fashion["plain_loop"]["epochs"] == 1
    assert fashion["handprop"]["final_test_acc"] == fashion["plain_loop"]["final_test_acc"]  # the same training


def test_the_textbook_loops_compute_the_same_descent():
    """network.py's per-digit loop, the torch.nn loop and the raw math are one algorithm:
    from the same weights, over the same batches, they end at the same weights."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(60, 784, generator=g), torch.arange(60) % 10
    order = torch.randperm(60, generator=g)
    raw, numpy_net, torch_nn = (cls(images, labels, seed=0) for cls in (RawMath, NetworkPy, TorchNN))
    start = [raw.w1.clone(), raw.b1.clone(), raw.w2.clone(), raw.b2.clone()]
    numpy_net.weights = [start[0].double().numpy(), start[2].double().numpy()]
    numpy_net.biases = [start[1].double().numpy()[:, None], start[3].double().numpy()[:, None]]
    with torch.no_grad():
        for p, value in zip(torch_nn.net.parameters(), start):
            p.copy_(value)
    for loop in (raw, numpy_net, torch_nn):
        loop.epoch(order)
    assert not torch.equal(raw.w1, start[0])
    ends = {
        "network.py": [torch.from_numpy(numpy_net.weights[0]).float(), torch.from_numpy(numpy_net.weights[1]).float()],
        "torch.nn": [torch_nn.net[0].weight.detach(), torch_nn.net[2].weight.detach()],
    }
    for name, (w1, w2) in ends.items():
        torch.testing.assert_close(w1, raw.w1, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(w2, raw.w2, atol=1e-5, rtol=1e-4, msg=name)


def test_the_default_recipe_loops_compute_the_same_descent():
    """The per-digit numpy loop, the torch.nn loop and the raw math of the default recipe
    (AdamW on the one-cycle schedule, smoothed cross-entropy) are one algorithm: without
    dropout and augmentation, from the same weights, they end at the same weights."""
    recipe = DefaultRecipe(["model.hidden=[16]", "model.dropout=0", "data.augment=null"], epochs=2)
    recipe.epochs = [epoch[:3] for epoch in recipe.epochs]  # three steps of each epoch
    recipe.schedule = recipe.schedule[:3] + recipe.schedule[32:35]
    loops = {"numpy": DefaultNumpy(recipe), "torch.nn": DefaultTorchNN(recipe), "raw": DefaultRaw(recipe)}
    for loop in loops.values():
        for epoch in (0, 1):
            loop.epoch(epoch)
    ends = {
        "numpy": [torch.from_numpy(w).float() for w in loops["numpy"].weights],
        "torch.nn": [m.weight.detach() for m in loops["torch.nn"].net if isinstance(m, torch.nn.Linear)],
        "raw": loops["raw"].params[0::2],
    }
    assert not torch.equal(ends["raw"][0], recipe.weights[0][0])
    for name in ("numpy", "torch.nn"):
        for w, reference in zip(ends[name], ends["raw"]):
            torch.testing.assert_close(w, reference, atol=1e-5, rtol=1e-4, msg=name)
