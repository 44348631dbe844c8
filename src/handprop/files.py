"""Files written whole or not at all: every checkpoint, and metrics.json.

Writing. ``atomic_write`` puts a file in place so that at every instant the target is
either the previous file or the complete new one: the bytes go to a temporary file
beside the target (same directory, so the same file system), are flushed and fsynced,
the temporary file is renamed over the target (``os.replace``: atomic on POSIX), and the
directory is fsynced so that the rename survives a power cut. A failed write removes the
temporary file and leaves the target untouched; a full disk says so in one line.
(Lightning's own save goes through fsspec, which writes in ``$TMPDIR`` and *moves* the
file: across file systems -- /tmp is often a tmpfs -- that is a copy into place, and a
kill in the middle leaves a truncated checkpoint.) ``AtomicCheckpointIO`` makes every
checkpoint the Trainer writes go this way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .errors import DiskFullError

log = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_write leaves behind if killed


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], durable: bool = True) -> None:
    """Write ``path`` with ``write(file)``, atomically (see the module's docstring).
    ``durable=False``: without the fsyncs, for files a power cut may cost (the Backprop
    tab's snapshots): still whole or absent for every reader."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # torch.save's zip writer raises its own RuntimeError on top of what stopped it:
        # the cause that matters is underneath (Ctrl-C, which must stay an interrupt; a full disk)
        interrupt = _underneath(e, lambda c: isinstance(c, KeyboardInterrupt))
        if interrupt is not None:
            raise interrupt from None
        if is_disk_full(e):
            kept = "the previous one is intact" if path.exists() else "nothing was written"
            raise no_space(path.parent, f"{path.name} was not written ({kept})") from None
        raise
    if durable:
        _fsync_directory(path.parent)


def no_space(directory: str | Path, what: str) -> DiskFullError:
    """The one message for a full disk: where, what was not written, and the fix."""
    return DiskFullError(
        f"no space left on {directory}: {what}. Free some space (or put the run on another disk "
        "with hydra.run.dir=DIR) and resume from checkpoints/last.ckpt"
    )


def is_disk_full(error: BaseException | None) -> bool:
    """Whether an error is, or was raised while handling, a write that found no space."""
    return _underneath(error, lambda c: isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT)) is not None


def _underneath(error: BaseException | None, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in ``error``'s chain (itself, its cause, what it interrupted) that is ``wanted``."""
    while error is not None and not wanted(error):
        error = error.__cause__ or error.__context__
    return error


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode()))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename itself is done
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files that a process killed in the middle of ``atomic_write``
    left in ``directory``. Only for a directory no live process writes to (the run's lock
    is held: ``handprop.rundir``)."""
    directory = Path(directory)
    stale = [p for p in directory.iterdir() if p.is_file() and _TEMPORARY.match(p.name)] if directory.is_dir() else []
    for p in stale:
        p.unlink()
        log.info("removed %s, left by an interrupted save", p)
    return stale


def local_path(path) -> Path | None:
    """A checkpoint's path on this machine's file system (``file://`` dropped), or None for an
    address of a remote one (``s3://...``), which Lightning's own I/O (fsspec) handles."""
    text = str(path).removeprefix("file://")
    return None if "://" in text else Path(text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, with every save atomic on the checkpoint's own file
    system (``atomic_write``) and removals limited to single files."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        local = local_path(path)
        if storage_options is not None or local is None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(local, lambda file: torch.save(checkpoint, file))

    def remove_checkpoint(self, path) -> None:
        local = local_path(path)
        if local is None:
            return super().remove_checkpoint(path)
        path = local
        if path.is_symlink() or not path.is_file():
            log.warning("not removing %s: not a checkpoint file", path)
            return
        path.unlink()
