"""Benchmarks: ``python -m handprop.bench`` (``make bench``) prints a table and writes JSON.

Every figure is a ratio of two things measured in the same process, interleaved
(A, B, B, A, ...) and summarised by the median of several repeats, so that the
machine's drift and noise fall on both sides alike.

backward  our hand-written backward vs PyTorch's autograd on the same network: the
          time of one training step (forward, cost, backward, SGD step) and the bytes
          kept alive for backward, for networks from 784-16-16-10 to 784-1024-1024-10;
          plus the cost of the live gradient audit at its default interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import functional as HF
from .nn import MLP

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


def interleaved_medians(
    fns: dict[str, Callable[[], None]], repeats: int, number: int, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds per call of each fn over repeats x number calls, the fns taking turns
    call by call (A B, B A, A B, ...) so that the machine's drift falls on all alike.

    ``sync`` waits for queued device work (torch.cuda.synchronize on a GPU)."""
    for fn in fns.values():  # warm-up: allocator, caches, lazy init
        for _ in range(max(2, number // 5)):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(repeats * number):
        for name in names if i % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def backward_vs_autograd(
    hidden, recipe: str, batch: int = 128, repeats: int = 9, seed: int = 0, device: str = "cpu", target_s: float = 0.03
) -> dict:
    torch.manual_seed(seed)
    r = RECIPES[recipe]
    mlp = MLP([784, *hidden, 10], r["activation"], dropout=r["dropout"]).to(device)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.01)
    x, y = torch.randn(batch, 784, device=device), torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

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
    t = interleaved_medians({m: (lambda m=m: step(m)) for m in HF.BACKWARDS}, repeats, number, sync)
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


def audit_overhead(every_n_steps: int = 100, batch: int = 128, repeats: int = 9) -> dict:
    """Time of one gradient audit relative to the training steps between two audits."""
    from lightning.pytorch.plugins.precision import Precision

    from .callbacks import GradientAudit
    from .module import DigitClassifier

    torch.manual_seed(0)
    model = DigitClassifier(dropout=0.25, label_smoothing=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    trainer = type("Trainer", (), {"precision_plugin": Precision()})()
    audit = GradientAudit(every_n_steps)

    def step():
        opt.zero_grad(set_to_none=True)
        model.output_and_loss(images, labels)[1].backward()
        opt.step()

    step()
    manual = [p.grad for layer in model.net.layers for p in (layer.weight, layer.bias)]
    rng = (torch.get_rng_state(), None)
    t = interleaved_medians(
        {"step": step, "audit": lambda: audit.relative_errors(trainer, model, (images, labels), manual, rng)},
        repeats,
        5,
    )
    return {
        "network": "784-512-256-10",
        "every_n_steps": every_n_steps,
        "audit_ms": t["audit"] * 1e3,
        "step_ms": t["step"] * 1e3,
        "overhead_pct": 100 * t["audit"] / (every_n_steps * t["step"]),
    }


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = " | ".join(title for title, _, _ in columns)
    lines = [head, " | ".join("---" for _ in columns)]
    for row in rows:
        lines.append(" | ".join(format(row[key], fmt) for _, key, fmt in columns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m handprop.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench/bench.json", help="where to write the JSON results")
    parser.add_argument("--repeats", type=int, default=9, help="repeats per measurement (median taken)")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)

    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    rows = [
        backward_vs_autograd(hidden, recipe, args.batch, args.repeats) for recipe in RECIPES for hidden in SIZES
    ]
    results["backward"] = rows
    print(f"\nManual backward vs PyTorch autograd: one training step, batch {args.batch}, CPU threads {results['threads']}")
    print("speed ratio = autograd time / manual time (>= 1: ours as fast or faster); "
          "memory ratio = manual saved bytes / autograd saved bytes (<= 1: ours keeps no more)\n")
    print(_table(rows, [
        ("network", "network", "<18"), ("recipe", "recipe", "<8"),
        ("manual ms", "step_ms_manual", ">9.3f"), ("autograd ms", "step_ms_autograd", ">11.3f"),
        ("speed ratio", "speed_ratio", ">11.3f"), ("saved bytes manual", "saved_bytes_manual", ">18,"),
        ("saved bytes autograd", "saved_bytes_autograd", ">20,"), ("memory ratio", "memory_ratio", ">12.3f"),
    ]))
    results["audit"] = audit = audit_overhead(repeats=args.repeats)
    print(f"\nGradient audit every {audit['every_n_steps']} steps ({audit['network']}): one audit "
          f"{audit['audit_ms']:.2f} ms, a step {audit['step_ms']:.2f} ms -> +{audit['overhead_pct']:.2f}% of training time")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
