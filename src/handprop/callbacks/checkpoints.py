"""Checkpoints: written whole or not at all, read without running code, and confined to
their run.

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

Reading. ``read_checkpoint`` loads with ``weights_only=True`` (only tensors and plain
data are unpickled: a file whose pickle would build other objects is refused before any
of it runs) and then checks what it holds before anything is built from it: a
``state_dict`` of finite tensors, hyper-parameters that build a network (on the meta
device: no memory) of exactly the stored shapes, and -- for a resume or a start from
weights -- the same network as this run's.

Confinement. The checkpoint callbacks' restored state names files (the best, the k-th
best, the last checkpoint) that Lightning later deletes when a better one replaces
them. A checkpoint is only data, so those names are checked: one that does not resolve
to a file directly inside this run's checkpoint directory is dropped with a warning,
and nothing outside that directory is ever deleted.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import pickle
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import CheckpointError, DiskFullError
from ..module import DigitClassifier

log = logging.getLogger(__name__)

# The model settings that make a network compute a different function from the same
# weights: a start from weights (init_from) must keep them.
FUNCTION_SETTINGS = ("input_size", "hidden", "num_classes", "activation", "output_activation", "normalize")
# ... and a resume continues the same training: the same cost and regularisation too.
# (backward, compile and init may change: the same math, the weights come from the file.)
RESUME_SETTINGS = (*FUNCTION_SETTINGS, "loss", "label_smoothing", "dropout", "l2")

_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_write leaves behind if killed


# --------------------------------------------------------------------------- writing


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` with ``write(file)``, atomically (see the module's docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, with every save atomic on the checkpoint's own file
    system (``atomic_write``) and removals limited to single files."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda file: torch.save(checkpoint, file))

    def remove_checkpoint(self, path) -> None:
        if not _is_local_file_protocol(path):
            return super().remove_checkpoint(path)
        path = Path(path)
        if path.is_symlink() or not path.is_file():
            log.warning("not removing %s: not a checkpoint file", path)
            return
        path.unlink()


# --------------------------------------------------------------------------- the checkpoint callbacks


def inside(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` resolves (symbolic links and '..' followed) to an entry directly
    inside ``directory``."""
    try:
        resolved, directory = Path(path).resolve(), Path(directory).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved.parent == directory


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, confined to its own directory: the paths a resumed
    state names are kept only if they lie directly inside ``dirpath``, and only files
    there are ever removed."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) != self.dirpath:
            # resumed into another directory: Lightning kept only the best path, of the old
            # run (and said so); this run keeps its own best checkpoints
            self._forget()
            return
        named = [self.best_model_path, self.kth_best_model_path, self.last_model_path, *self.best_k_models]
        outside = [str(p) for p in named if p and not (_is_local_file_protocol(p) and inside(p, self.dirpath))]
        if outside:
            self._forget()
            log.warning(
                f"the checkpoint's {type(self).__name__} state names files outside this run's checkpoint directory "
                f"{self.dirpath} ({', '.join(sorted(set(outside)))}): that state is dropped, and those files are "
                "never touched; this run keeps its best checkpoints afresh"
            )

    def _forget(self) -> None:
        self.best_model_path = self.kth_best_model_path = self.last_model_path = ""
        self.best_k_models, self.best_model_score = {}, None
        self.kth_value = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)

    def _should_remove_checkpoint(self, trainer, previous: str, current: str) -> bool:
        return inside(previous, self.dirpath) and super()._should_remove_checkpoint(trainer, previous, current)


class LastCheckpoint(RunCheckpoint):
    """``<dirpath>/last.ckpt`` after every epoch, for resuming (a ModelCheckpoint without
    a monitor)."""

    @property
    def state_key(self) -> str:
        # the key of its state in a checkpoint: a stock ModelCheckpoint's, as earlier runs wrote it
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)


class BestCheckpoint(RunCheckpoint):
    """The best epoch by the monitored metric, except that an epoch as good as the best so
    far replaces it.

    Accuracy on a few hundred validation digits moves in steps of 0.2% and ties often; the
    stock callback keeps the first epoch to reach the best value, usually one in the
    middle of the schedule, while the later epoch of a tie has the better-annealed
    weights (measured: 96.0% vs 97.6% test accuracy for the default recipe, seed 42).
    """

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        at_least_as_good = {"min": torch.le, "max": torch.ge}[self.mode]
        decision = at_least_as_good(current, self.best_k_models[self.kth_best_model_path])
        return trainer.strategy.reduce_boolean_decision(bool(decision))  # unanimous across processes


class InterruptCheckpoint(Callback):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM during training: a checkpoint of exactly
    where training stood, mid-epoch included (the loader's position and the random
    generators travel in it), as ``<dirpath>/<filename>.ckpt``. Only while fitting: an
    interrupted test (of the best checkpoint, whose weights are not where training
    stood) writes nothing. Other exceptions save nothing here: a diverged or failed run
    keeps its last good checkpoint instead. A run that then finishes removes it:
    last.ckpt has superseded it.

    Not Lightning's ``OnExceptionCheckpoint``, on purpose: with one of those among the
    callbacks, ``trainer.fit(ckpt_path=None)`` silently resumes from the newest checkpoint
    it finds in the directory (``ckpt_path="last"``), so a new run started in an old run's
    directory would continue the old one. Here a run resumes only when asked to."""

    def __init__(self, dirpath: str, filename: str = "interrupted"):
        if not filename:
            raise ValueError("filename cannot be empty")
        self.dirpath, self.filename = dirpath, filename
        self._in_validation = False  # whether the interrupt being saved hit an epoch's validation

    @property
    def ckpt_path(self) -> str:
        return str(Path(self.dirpath) / f"{self.filename}.ckpt")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:

        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == TrainerFn.FITTING:
            self._in_validation = trainer.validating and not trainer.sanity_checking
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # atomic: AtomicCheckpointIO
            log.warning("interrupted: checkpoint written to %s", self.ckpt_path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._in_validation:
            self._in_validation = False
            _validate_again_on_resume(checkpoint)

    def on_fit_end(self, trainer, pl_module) -> None:
        if Path(self.ckpt_path).is_file():
            trainer.strategy.remove_checkpoint(self.ckpt_path)


def _validate_again_on_resume(checkpoint: dict) -> None:
    """An interrupt during an epoch's validation: make the resumed run validate that epoch
    again, whole, so that its val/acc and the best-checkpoint decision are not lost.

    Lightning repeats a validation on resume only when the interrupt hit inside a
    batch's step (its progress then reads started == ready, processed == completed ==
    started - 1); between batches, or in a hook, it skips the rest of that validation.
    The progress is written as the first case, in the first batch, so that the resumed
    validation runs over every batch (its metrics start afresh in the new process)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
    if not progress or not progress["total"]["ready"]:
        log.warning("interrupted during validation: the resumed run may not repeat this epoch's validation")
        return
    base = progress["total"]["ready"] - progress["current"]["ready"]  # batches of the validations before this one
    for counts, before in ((progress["total"], base), (progress["current"], 0)):
        # inside the step of this validation's first batch: the resume starts over at batch 0
        counts.update(ready=before + 1, started=before + 1, processed=before, completed=before)


# --------------------------------------------------------------------------- reading


def read_checkpoint(
    path: str | Path, against=None, same: tuple[str, ...] = RESUME_SETTINGS, option: str | None = "ckpt_path"
) -> dict:
    """Load a checkpoint safely and make sure it is a handprop checkpoint whose contents
    fit together (see the module's docstring). With ``against`` (this run's
    DigitClassifier), also that it holds the same network: every parameter's shape, and
    the model settings named in ``same``. ``option``: the setting that named the file, for
    the messages (None: the path alone, as a command-line argument)."""
    path = Path(path)
    what = f"{option}={path}" if option else str(path)
    if not path.exists():
        raise CheckpointError(f"{what}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{what}: not a regular file (a directory, a pipe or a device); give a .ckpt file")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise CheckpointError(f"{what} is not a handprop checkpoint (cannot be read: the file is empty)")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
        raise CheckpointError(
            f"{what} is not a handprop checkpoint (cannot be read: not a file torch.save writes; "
            f"it starts with the bytes {head.hex(' ')})"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if not unsafe:  # not a pickle torch.save writes
            found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(e))
            raise CheckpointError(
                f"{what} is not a handprop checkpoint (cannot be read: not a file torch.save "
                f"writes{': ' + found.group(1) if found else ''})"
            ) from None
        names = re.findall(r"GLOBAL (\S+?)[.,]?(?:\s|$)", unsafe[0])
        raise CheckpointError(
            f"{what}: refused to load: the file holds Python objects other than tensors and plain "
            f"data (it asks for {', '.join(names) or 'an unknown global'}), which could run code while loading. "
            "handprop's own checkpoints never do; load only checkpoints you made or trust."
        ) from None
    except Exception as e:  # truncated, a damaged zip, ...
        raise CheckpointError(
            f"{what} is not a handprop checkpoint (cannot be read: {_reason(e)}); "
            "it may be truncated or damaged: use another checkpoint of the run"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise CheckpointError(f"{what} is not a handprop checkpoint (no state_dict and hyper_parameters)")
    state, hp = checkpoint["state_dict"], checkpoint["hyper_parameters"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} is not a handprop checkpoint (its state_dict is not a set of tensors)")
    if not isinstance(hp, dict):
        raise CheckpointError(f"{what} is not a handprop checkpoint (its hyper_parameters are not a mapping)")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(
            f"{what} holds weights that are NaN or infinite ({', '.join(broken)}): it was saved "
            "from a diverged run. Use an earlier checkpoint of that run."
        )
    model = _model_on_meta(what, hp)
    _compare_shapes(
        what,
        "the network its hyper_parameters describe",
        model.state_dict(),
        state,
        "the file was edited or damaged; use an intact checkpoint",
    )
    if against is not None:
        _compare_shapes(
            what,
            "this run's network",
            against.state_dict(),
            state,
            "use the checkpoint's own model settings: " + _settings_hint(hp),
        )
        _compare_settings(what, against, hp, same)
    return checkpoint


def _reason(e: Exception) -> str:
    """An exception's first line, without torch's advice to load files unsafely."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "damaged file" if "weights_only" in first else first.rstrip(".")


def model_from_checkpoint(checkpoint: dict):
    """The DigitClassifier a checkpoint that ``read_checkpoint`` returned holds: built from
    its hyper-parameters and loaded with its weights (the file is not read again)."""
    model = DigitClassifier(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def _model_on_meta(what: str, hp: dict):
    """The network the hyper-parameters describe, built on the meta device: every rule of
    the model's constructor applies, and no memory is allocated whatever sizes it names."""

    known = inspect.signature(DigitClassifier).parameters
    unknown = sorted(set(hp) - set(known))
    if unknown:
        raise CheckpointError(
            f"{what}: its hyper_parameters have keys this version of handprop does not know "
            f"({', '.join(unknown)}); use a checkpoint handprop wrote"
        )
    try:
        with torch.device("meta"):
            return DigitClassifier(**hp)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{what}: its hyper_parameters do not describe a handprop network ({e}); the file was edited or damaged"
        ) from None


def _compare_shapes(what: str, whose: str, ours: dict, theirs: dict, fix: str) -> None:
    problems = [
        f"{k}: checkpoint {tuple(theirs[k].shape)}, {whose} {tuple(v.shape)}"
        for k, v in ours.items()
        if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    problems += [f"{k}: missing from the checkpoint" for k in ours if k not in theirs]
    problems += [f"{k}: in the checkpoint, not in {whose}" for k in theirs if k not in ours]
    if problems:
        raise CheckpointError(
            f"{what} holds a different network than {whose}:\n  "
            + "\n  ".join(problems)
            + f"\n{fix[0].upper()}{fix[1:]}"
        )


def _settings_hint(hp: dict) -> str:
    return " ".join(f"model.{k}={_override_value(hp[k])}" for k in ("hidden", "activation") if k in hp)


def _override_value(value) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def _compare_settings(what: str, model, hp: dict, keys: tuple[str, ...]) -> None:
    defaults = {k: p.default for k, p in inspect.signature(type(model)).parameters.items()}
    differ = []
    for key in keys:
        theirs, ours = hp.get(key, defaults.get(key)), model.hparams.get(key, defaults.get(key))
        if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
            theirs, ours = list(theirs), list(ours)
        if theirs != ours:
            differ.append((key, theirs, ours))
    if differ:
        lines = [f"model.{k}: checkpoint {_override_value(t)}, this run {_override_value(o)}" for k, t, o in differ]
        fix = " ".join(f"model.{k}={_override_value(t)}" for k, t, _ in differ)
        raise CheckpointError(
            f"{what} was trained with other model settings than this run's:\n  "
            + "\n  ".join(lines)
            + f"\nRun with the checkpoint's settings ({fix}), or train a new network."
        )


def check_same_recipe(path: str | Path, checkpoint: dict, model) -> None:
    """A resume restores the checkpoint's optimiser and schedule states into this run's
    optimiser and schedule, which must be of the same kinds: a OneCycleLR state loaded
    into a cosine schedule, or no schedule where there was one (the rate frozen at its
    last, annealed value), silently trains something else."""
    recorded = checkpoint.get("recipe")
    if not isinstance(recorded, dict):
        return  # a checkpoint from before recipes were recorded
    ours = model.training_recipe()
    differ = [
        f"{k}: checkpoint {recorded.get(k) or 'none'}, this run {ours[k] or 'none'}"
        for k in ours
        if recorded.get(k) != ours[k]
    ]
    if differ:
        raise CheckpointError(
            f"ckpt_path={path} trained with another optimiser or schedule than this run's ({'; '.join(differ)}): "
            "a resume continues the checkpoint's own, whose state fits no other. Resume with the optimizer= and "
            "scheduler= of the run that wrote it (its .hydra/overrides.yaml), or train on from these weights with a "
            f"fresh optimiser and schedule in a new run: init_from={path} (instead of ckpt_path)"
        )
