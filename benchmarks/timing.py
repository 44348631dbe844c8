"""How every section of ``make bench`` times: the variants of a comparison take turns in one
process, in an order that reverses from turn to turn (A B, B A, ...), so that the machine's
drift falls on all alike; medians are compared; the torch thread count is set and stated;
the figures go into one kind of table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def sync(device="cpu") -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def threads(count: int | None = None) -> Iterator[int]:
    """torch's CPU thread count set to ``count`` for the block (None: left as it is), and
    restored after it; yields the count in force, for the report to state."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def take_turns(runs: dict[str, Callable[[], object]], rounds: int, first: int = 0) -> dict[str, list]:
    """``rounds`` turns of every run, the order reversing from turn to turn (turn ``first``,
    first + 1, ...; an odd turn runs them in reverse): what each call returned, by run. For
    runs that time themselves (an epoch, a whole fit, a process)."""
    out: dict[str, list] = {name: [] for name in runs}
    names = list(runs)
    for turn in range(first, first + rounds):
        for name in names if turn % 2 == 0 else names[::-1]:
            out[name].append(runs[name]())
    return out


def interleaved_medians(
    fns: dict[str, Callable[[], None]], repeats: int, number: int, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds per call of each fn over ``repeats`` x ``number`` calls, the fns taking
    turns call by call (take_turns); ``sync`` waits for queued device work before each
    clock read (torch.cuda.synchronize on a GPU)."""
    for fn in fns.values():  # warm-up: allocator, caches, lazy init
        for _ in range(max(2, number // 5)):
            fn()

    def timed(fn: Callable[[], None]) -> Callable[[], float]:
        def call() -> float:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        return call

    return medians(take_turns({name: timed(fn) for name, fn in fns.items()}, repeats * number))


def medians(samples: dict[str, list[float]], skip: int = 0) -> dict[str, float]:
    """The median of each list of seconds, its first ``skip`` (warm-up) left out."""
    return {name: statistics.median(s[skip:]) for name, s in samples.items()}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: ``columns`` are (title, key of a row, format spec)."""
    lines = [" | ".join(title for title, _, _ in columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(format(row[key], fmt) for _, key, fmt in columns) for row in rows]
    return "\n".join(lines)


def toy(args, **sizes) -> dict:
    """A section's toy sizes under --quick (every section runs, in seconds, as make test runs
    it), else none: the section's defaults."""
    return sizes if args.quick else {}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
