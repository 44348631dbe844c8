"""The runs under TensorBoard's logdir that the Backprop tab can show, found without torch.

A run is a directory with ``backprop/epoch*.pt`` snapshots (``callbacks.BackpropSnapshots``
writes them). Names the page sends back are paths relative to the logdir and are checked
before any file is opened: no absolute path, no ``..``, nothing that resolves (links
followed) outside the logdir, and only a snapshot file of the run's own ``backprop/``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

SNAPSHOT = re.compile(r"^epoch(\d{4,})\.pt$")
SKIP = {"backprop", "checkpoints", "pictures", "tensorboard", ".hydra", "csv", "__pycache__", ".git"}


def snapshot_name(epoch: int) -> str:
    return f"epoch{epoch:04d}.pt"


def snapshot_epochs(directory: str | Path) -> list[int]:
    """The epochs with a snapshot in ``directory``, in order."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(SNAPSHOT.match, names) if m)


class BadRequest(ValueError):
    """A request the tab refuses: the message names what is wrong (HTTP 400)."""


_LOADING = threading.Lock()


def load_once(load, path: Path, unreadable: str):
    """``load(str(path), version)``, an ``lru_cache``d loader, for this version of the file
    (its size and modification time): a file is read once, and again when it is rewritten.
    One load at a time. ``unreadable``: the refusal when the file cannot be looked at, with
    a ``{}`` for the reason."""
    try:
        stat = path.stat()
    except OSError as e:
        raise BadRequest(unreadable.format(e.strerror)) from None
    with _LOADING:
        return load(str(path), (stat.st_size, stat.st_mtime_ns))


def find_runs(logdir: str | Path, limit: int = 10_000) -> list[str]:
    """Every run directory under ``logdir`` with snapshots, as paths relative to it, sorted."""
    logdir = Path(logdir)
    found = []
    for top, dirs, _ in os.walk(logdir, followlinks=False):
        if "backprop" in dirs and snapshot_epochs(Path(top) / "backprop"):
            found.append(Path(top).relative_to(logdir).as_posix() or ".")
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        if len(found) >= limit:
            break
    return sorted(found)


class RunCache:
    """Whether the logdir holds a run the tab can show, answered from memory: the first
    call looks, later calls answer at once and look again in a background thread when the
    answer is older than ``max_age`` seconds."""

    def __init__(self, logdir: str | Path, max_age: float = 10.0):
        self.logdir, self.max_age = logdir, max_age
        self._runs: list[str] | None = None
        self._when = 0.0
        self._lock = threading.Lock()
        self._looking = False

    def runs(self, fresh: bool = False) -> list[str]:
        if fresh or self._runs is None:
            self._look()
        elif time.monotonic() - self._when > self.max_age:
            with self._lock:
                start, self._looking = not self._looking, True
            if start:
                threading.Thread(target=self._look, daemon=True).start()
        return list(self._runs or [])

    def _look(self) -> None:
        try:
            runs = find_runs(self.logdir) if self.logdir else []
        finally:
            self._looking = False
        self._runs, self._when = runs, time.monotonic()


def _resolved(path: Path, what: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a link loop, a name too long, a NUL byte
        raise BadRequest(f"{what}: cannot be read ({e})") from None


def backprop_directory(logdir: str | Path, run) -> Path:
    """The ``backprop/`` directory of the run named ``run`` (a path relative to ``logdir``),
    resolved, and confined to the logdir: neither the run nor its ``backprop/`` may lead
    (by '..', an absolute path or a link) outside it."""
    if not isinstance(run, str) or not run:
        raise BadRequest("no run given: pick one of the runs listed")
    if run.startswith(("/", "\\")) or ".." in Path(run).parts or "\\" in run or "\0" in run:
        raise BadRequest(f"run {run!r}: give a run as listed (a path inside the logdir, without '..')")
    root = _resolved(Path(logdir), "the logdir")
    directory = _resolved(root / run / "backprop", f"run {run!r}")
    if root not in directory.parents:
        raise BadRequest(f"run {run!r}: outside the logdir (a link out of it); only runs under --logdir are read")
    try:
        found = directory.is_dir() and bool(snapshot_epochs(directory))
    except OSError as e:  # a name too long for the file system, a directory it may not read
        raise BadRequest(f"run {run!r}: cannot be read ({e.strerror})") from None
    if not found:
        raise BadRequest(
            f"run {run!r} has no snapshots for the Backprop tab (backprop/epoch*.pt); "
            "train it with handprop (python train.py experiment=3b1b)"
        )
    return directory


def run_file(directory: Path, name: str, run) -> Path:
    """``directory/name``, a regular file in that very directory (not a link elsewhere)."""
    path = directory / name
    if _resolved(path, f"run {run!r}: {name}").parent != directory:
        raise BadRequest(f"run {run!r}: backprop/{name} links outside the run's backprop/; it is not read")
    try:
        found = path.is_file()
    except OSError as e:
        raise BadRequest(f"run {run!r}: backprop/{name} cannot be read ({e.strerror})") from None
    if not found:
        raise BadRequest(f"run {run!r}: backprop/{name} is missing; train the run again")
    return path


def snapshot_file(logdir: str | Path, run, epoch) -> Path:
    """The snapshot of ``epoch`` of the run, confined to the run's ``backprop/``."""
    directory = backprop_directory(logdir, run)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise BadRequest(f"snapshot {epoch!r}: give an epoch number as listed, e.g. 0 for the untrained network")
    if epoch not in snapshot_epochs(directory):
        kept = ", ".join(map(str, snapshot_epochs(directory)))
        raise BadRequest(f"run {run!r} has no snapshot of epoch {epoch} (kept: {kept})")
    return run_file(directory, snapshot_name(epoch), run)
