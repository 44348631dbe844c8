"""Section ``cli``: how long ``python train.py --help`` takes as a user runs it, a fresh
process each time (a time, not a ratio: the budget is 2 s), and whether it imported torch."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import timing

ROOT = Path(__file__).resolve().parents[1]
HELP_BUDGET_S = 2.0  # `python train.py --help` answers within this (torch and Lightning load only for a run)
HEAVY = ("torch", "lightning", "torchvision", "matplotlib")  # what --help should not import


def help_speed(repeats: int = 9, script: str = "train.py") -> dict:
    """Wall seconds of ``python <script> --help``, each a fresh subprocess as a user starts
    it (interpreter start, imports, Hydra composing the config, the text printed): the
    median of ``repeats`` after one unmeasured run (the OS's file cache, .pyc files).
    One more run under ``-X importtime`` names the heavy packages it imported, if any."""

    def run(*flags: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, *flags, script, "--help"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"python {script} --help failed (exit status {proc.returncode}):\n{proc.stderr[-2000:]}")
        return proc

    def timed() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    proc = run()  # unmeasured
    times = timing.take_turns({"help": timed}, repeats)["help"]
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in run("-X", "importtime").stderr.splitlines()
        if line.startswith("import time")
    }
    median = timing.medians({"help": times})["help"]
    return {
        "command": f"python {script} --help",
        "repeats": repeats,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "budget_s": HELP_BUDGET_S,
        "under_budget": median < HELP_BUDGET_S,
        "heavy_imports": [name for name in HEAVY if name in imported],
        "help_lines": len(proc.stdout.splitlines()),
    }


def measure(args) -> dict:
    return help_speed(repeats=args.repeats)


def report(c: dict) -> str:
    verdict = "under" if c["under_budget"] else "OVER"
    heavy = ", ".join(c["heavy_imports"]) or "none of " + ", ".join(HEAVY)
    return (
        f"\n{c['command']}: {c['median_s']:.2f} s (median of {c['repeats']}, {c['min_s']:.2f}-{c['max_s']:.2f} s), "
        f"{verdict} the {c['budget_s']:.0f} s budget; {c['help_lines']} lines; imported {heavy}"
    )
