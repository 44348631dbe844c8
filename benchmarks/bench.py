"""Benchmarks: ``python benchmarks/bench.py`` (``make bench``) prints a table and writes JSON.

One file per section, each with ``measure(args)`` and ``report(result)``, all timed by
timing.py: the variants of a comparison take turns in one process, medians are compared,
the thread count is stated.

textbook   one epoch of nielsen_ch1 (batch 10) and of the default recipe four ways:
           handprop, a network.py-style numpy loop, a torch.nn loop, the raw math
step_cost  one training step at batch 10 with each of Lightning's calls swapped for the raw torch one
backward   the hand-written backward vs PyTorch's autograd: step time and bytes kept for backward
audit      the live gradient audit's cost at its default interval
gemm       a large MLP's training step in FLOP/s, as a fraction of the machine's GEMM rate
epoch      one epoch of the default recipe: handprop under Lightning, the same work in a plain
           PyTorch loop, torchvision's MNIST + DataLoader; and the data path alone
fashion    time to 89% test accuracy on full Fashion-MNIST, handprop vs the plain loop
cli        ``python train.py --help`` as a user runs it (a time, not a ratio: the budget is 2 s)
board      TensorBoard's Backprop tab over HTTP: is_active with 200 runs, the explain route's latency
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import audit
import backward
import board
import cli
import epoch
import fashion
import gemm
import step_cost
import textbook
import torch
from backward import SIZES, backward_vs_autograd  # tests/gpu_check.py imports them from here

__all__ = ["SECTIONS", "SIZES", "backward_vs_autograd", "main"]

SECTIONS = {  # --only name: its module, in the order they run
    "textbook": textbook,
    "step_cost": step_cost,
    "backward": backward,
    "audit": audit,
    "gemm": gemm,
    "epoch": epoch,
    "fashion": fashion,
    "cli": cli,
    "board": board,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench/bench.json", help="where to write the JSON results")
    parser.add_argument("--repeats", type=int, default=9, help="repeats per measurement (median taken)")
    parser.add_argument("--batch", type=int, default=128, help="the backward section's batch")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--device", default="cpu", help="where the epoch and fashion sections train (cpu, cuda)")
    parser.add_argument(
        "--fashion-dir",
        default="/usr/share/datasets/fashion-mnist",
        help="Fashion-MNIST's four IDX files (apt-get install dataset-fashion-mnist)",
    )
    parser.add_argument(
        "--mnist-dir",
        default="../shared/data/mnist",
        help="full MNIST in torchvision's layout, for the textbook and step_cost sections (else the embedded sample)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every section at toy sizes, one repeat: that the benchmark runs (make test does), not what it measures",
    )
    args = parser.parse_args(argv)
    sections = args.only.split(",")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; the sections: {', '.join(SECTIONS)}")
    if args.quick:
        args.repeats, args.batch = 1, 16
    mnist = Path(args.mnist_dir)
    full = not args.quick and (mnist / "MNIST" / "raw").is_dir()
    args.mnist_overrides = ("data=mnist", f"data.data_dir={mnist.resolve()}") if full else ()

    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in sections:
        results[name] = SECTIONS[name].measure(args)
        print(SECTIONS[name].report(results[name]), flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
