"""The checkpoint callbacks: the best epoch, the last epoch, the interrupted one, confined to their run.

Confinement. The checkpoint callbacks' restored state names files (the best, the k-th
best, the last checkpoint) that Lightning later deletes when a better one replaces
them. A checkpoint is only data, so those names are checked as the state is restored:
one that does not resolve (links followed) to a file directly inside this run's
checkpoint directory -- another directory, a remote address -- is dropped with a warning,
so that Lightning deletes nothing outside that directory.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


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

    key_class: str | None = None  # the class name its state is kept under in a checkpoint (None: its own)

    @functools.cached_property
    def state_key(self) -> str:
        # Composed once: it depends on settings fixed at construction, and Lightning asks for
        # it at every hook it calls (its profiler names each call by it), several times a step.
        key = ModelCheckpoint.state_key.fget(self)
        return key if self.key_class is None else key.replace(type(self).__qualname__, self.key_class, 1)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) != self.dirpath:
            # resumed into another directory: Lightning kept only the best path, of the old
            # run (and said so); this run keeps its own best checkpoints
            self._forget()
            return
        named = [self.best_model_path, self.kth_best_model_path, self.last_model_path, *self.best_k_models]
        outside = [str(p) for p in named if p and not inside(p, self.dirpath)]
        if outside:
            self._forget()
            log.warning(
                f"the checkpoint's {type(self).__name__} state names files outside this run's checkpoint directory "
                f"{self.dirpath} ({', '.join(sorted(set(outside)))}): that state is dropped, and those files are "
                "never touched; this run keeps its best checkpoints afresh"
            )

    def format_checkpoint_name(self, metrics: dict, filename: str | None = None, ver: int | None = None, **kw) -> str:
        """The file's name, with ``{epoch}`` counted from 1 as everywhere in handprop
        (Lightning counts from 0): ``epoch120-...`` is the 120th epoch's checkpoint."""
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": int(metrics["epoch"]) + 1}
        return super().format_checkpoint_name(metrics, filename, ver, **kw)

    def _forget(self) -> None:
        self.best_model_path = self.kth_best_model_path = self.last_model_path = ""
        self.best_k_models, self.best_model_score = {}, None
        self.kth_value = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)


class LastCheckpoint(RunCheckpoint):
    """``<dirpath>/last.ckpt`` after every epoch, for resuming (a ModelCheckpoint without
    a monitor)."""

    key_class = "ModelCheckpoint"  # a stock ModelCheckpoint's key, as earlier runs wrote it


class BestCheckpoint(RunCheckpoint):
    """The best epoch by the monitored metric, except that an epoch as good as the best so
    far replaces it.

    Accuracy on a few hundred validation digits moves in steps of 0.2% and ties often; the
    stock callback keeps the first epoch to reach the best value, usually one in the
    middle of the schedule, while the later epoch of a tie has the better-annealed
    weights, which test better.
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

    An epoch's validation is part of the epoch (its val/acc, the best checkpoint's
    decision), so a Ctrl-C during one takes effect when it is over: before the next
    training batch, or, when it was the run's last, as the final test starts -- as
    Lightning acts on SIGTERM only before a training batch. A second Ctrl-C stops at once.

    Not Lightning's ``OnExceptionCheckpoint``, on purpose: with one of those among the
    callbacks, ``trainer.fit(ckpt_path=None)`` silently resumes from the newest checkpoint
    it finds in the directory (``ckpt_path="last"``), so a new run started in an old run's
    directory would continue the old one. Here a run resumes only when asked to."""

    def __init__(self, dirpath: str, filename: str = "interrupted"):
        self.dirpath, self.filename = dirpath, filename
        self._sigint = None  # while a validation runs: Python's own SIGINT handler, to put back
        self._interrupted = False  # a Ctrl-C came during that validation

    @property
    def ckpt_path(self) -> str:
        return str(Path(self.dirpath) / f"{self.filename}.ckpt")

    def on_validation_start(self, trainer, pl_module) -> None:
        main = threading.current_thread() is threading.main_thread()  # (signal handlers live there)
        python_handler = signal.getsignal(signal.SIGINT) is not None  # (None: one set outside Python)
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting and main and python_handler and self._sigint is None:
            self._sigint = signal.signal(signal.SIGINT, self._after_validation)

    def _after_validation(self, signum, frame) -> None:
        self._restore()  # a second Ctrl-C stops at once
        self._interrupted = True

    def _restore(self) -> None:
        """Python's own SIGINT handler back, if it is ours that is set (Lightning sets its own
        to ignore Ctrl-C while it shuts down after one)."""
        if self._sigint is not None and signal.getsignal(signal.SIGINT) == self._after_validation:
            signal.signal(signal.SIGINT, self._sigint)
        self._sigint = None

    def _take_a_held_interrupt(self) -> None:
        self._restore()
        if self._interrupted:
            self._interrupted = False
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._take_a_held_interrupt()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()  # (a Ctrl-C held through the last validation stops the final test, as it starts)

    def on_test_start(self, trainer, pl_module) -> None:
        self._take_a_held_interrupt()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == TrainerFn.FITTING:
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # atomic: AtomicCheckpointIO
            log.warning("interrupted: checkpoint written to %s", self.ckpt_path)

    def on_fit_end(self, trainer, pl_module) -> None:
        if Path(self.ckpt_path).is_file():
            trainer.strategy.remove_checkpoint(self.ckpt_path)
