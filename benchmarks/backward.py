"""Section ``backward``: the hand-written backward against PyTorch's autograd on the same
network, one training step (forward, cost, backward, SGD step) and the bytes kept alive for
backward, for networks from 784-16-16-10 to 784-1024-1024-10 and two recipes."""

from __future__ import annotations

import time
from collections.abc import Callable

import timing
import torch

from handprop import functional as HF
from handprop.nn import MLP

SIZES = ([16, 16], [128, 64], [512, 256], [1024, 1024])
RECIPES = {  # what the network does besides its matrix products
    "default": {"activation": "relu", "dropout": 0.25, "label_smoothing": 0.1},  # conf/model/mlp.yaml
    "plain": {"activation": "relu", "dropout": 0.0, "label_smoothing": 0.0},
}


def saved_bytes(run: Callable[[], object]) -> int:
    """Bytes of distinct storage that autograd keeps for backward while ``run()`` builds its graph.

    Counted with saved-tensor hooks, each storage once: a layer's output that the next
    layer saves as its input is one tensor, not two.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())


def backward_vs_autograd(
    hidden, recipe: str, batch: int = 128, repeats: int = 9, seed: int = 0, device: str = "cpu", target_s: float = 0.03
) -> dict:
    torch.manual_seed(seed)
    r = RECIPES[recipe]
    mlp = MLP([784, *hidden, 10], r["activation"], dropout=r["dropout"]).to(device)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.01)
    x, y = torch.randn(batch, 784, device=device), torch.randint(0, 10, (batch,), device=device)

    def sync():
        timing.sync(device)

    def graph(backward: str):  # what a training step computes: output and cost
        mlp.backward = backward
        return mlp(x, y, "cross_entropy", r["label_smoothing"])[1]

    def step(backward: str) -> None:
        opt.zero_grad(set_to_none=True)
        graph(backward).backward()
        opt.step()

    for _ in range(3):
        step("autograd")
    sync()
    start = time.perf_counter()
    step("autograd")
    sync()
    number = max(3, int(target_s / (time.perf_counter() - start)))  # calls for ~target_s a repeat
    t = timing.interleaved_medians({m: (lambda m=m: step(m)) for m in HF.BACKWARDS}, repeats, number, sync)
    mem = {m: saved_bytes(lambda m=m: graph(m)) for m in HF.BACKWARDS}
    return {
        "network": "-".join(map(str, [784, *hidden, 10])),
        "recipe": recipe,
        "batch": batch,
        "device": device,
        "step_ms_manual": t["manual"] * 1e3,
        "step_ms_autograd": t["autograd"] * 1e3,
        "speed_ratio": t["autograd"] / t["manual"],  # > 1: ours is faster
        "saved_bytes_manual": mem["manual"],
        "saved_bytes_autograd": mem["autograd"],
        "memory_ratio": mem["manual"] / mem["autograd"],  # < 1: ours keeps less
    }


def measure(args) -> dict:
    """Every recipe and size (--quick: the smallest), at the driver's batch and thread count."""
    sizes = SIZES[:1] if args.quick else SIZES
    with timing.threads() as threads:
        rows = [backward_vs_autograd(h, r, args.batch, args.repeats) for r in RECIPES for h in sizes]
    return {"batch": args.batch, "threads": threads, "rows": rows}


COLUMNS = [
    ("network", "network", "<18"),
    ("recipe", "recipe", "<8"),
    ("manual ms", "step_ms_manual", ">9.3f"),
    ("autograd ms", "step_ms_autograd", ">11.3f"),
    ("speed ratio", "speed_ratio", ">11.3f"),
    ("saved bytes manual", "saved_bytes_manual", ">18,"),
    ("saved bytes autograd", "saved_bytes_autograd", ">20,"),
    ("memory ratio", "memory_ratio", ">12.3f"),
]


def report(r: dict) -> str:
    return (
        f"\nManual backward vs PyTorch autograd: one training step, batch {r['batch']}, "
        f"{timing.plural(r['threads'], 'CPU thread')}, the two taking turns\n"
        "manual: loss.backward() through MLPFunction, as every training step runs it\n"
        "speed ratio = autograd time / manual time (>= 1: ours as fast or faster); "
        "memory ratio = manual saved bytes / autograd saved bytes (<= 1: ours keeps no more)\n\n"
        + timing.table(r["rows"], COLUMNS)
    )
