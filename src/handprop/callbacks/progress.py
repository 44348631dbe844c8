"""The console's progress bar, counting optimiser steps."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import TQDMProgressBar


def on_a_terminal() -> bool:
    """Whether the console is a terminal (not a file, a pipe or a batch system's log)."""
    return sys.stdout.isatty()


def epoch_limit(trainer) -> int | None:
    """The run's number of epochs; None for a run without one (max_epochs -1 or None: max_steps decides)."""
    return trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None


def epoch_of(trainer, epoch: int) -> str:
    """Epoch ``epoch`` (counted from 1) as the console says it: "12/120", or "12" without an epoch limit."""
    return f"{epoch}/{epoch_limit(trainer)}" if epoch_limit(trainer) else str(epoch)


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, for training and evaluation alike, drawn only on a terminal
    (in a batch job or a pipe the log's per-epoch lines say the same, once per epoch:
    ``RunLog``). It counts an epoch's optimiser steps (mini-batches): with chunked
    training (``model.chunk`` > 1) a Lightning batch holds many of them, and the bar then
    moves by a chunk at a time. It shows the last step's loss and the validation
    accuracy, rounded, and not Lightning's ``v_num`` (the logger's version: here the
    run's overrides, already in the run's name)."""

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and on_a_terminal()

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: f"{v:.3f}" if isinstance(v, float) else v for k, v in metrics.items()}

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if self.train_progress_bar is not None:  # epochs counted from 1, as in the log
            self.train_progress_bar.set_description(f"epoch {epoch_of(trainer, trainer.current_epoch + 1)}")

    @property
    def total_train_batches(self) -> int | float:
        loader = self.trainer.train_dataloader
        if getattr(loader, "chunk", 1) == 1:  # one mini-batch per Lightning batch: Lightning's own count
            return super().total_train_batches
        return loader.steps_per_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loader = getattr(batch, "loader", None)
        if loader is None or loader.chunk == 1:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, steps = self.train_progress_bar, loader.consumed  # the epoch's mini-batches trained so far
        if bar is not None and self.is_enabled and (steps - bar.n >= self.refresh_rate or steps >= bar.total):
            bar.n = steps
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
