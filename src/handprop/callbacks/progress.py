"""The console's progress bar, counting optimiser steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting an epoch's optimiser steps (mini-batches). With
    chunked training (``model.chunk`` > 1) a Lightning batch holds many of them: the bar
    then moves by a chunk at a time, but its numbers stay the steps of the epoch."""

    @property
    def total_train_batches(self) -> int | float:
        loader = self.trainer.train_dataloader
        if self.trainer.lightning_module.automatic_optimization or not hasattr(loader, "steps_per_epoch"):
            return super().total_train_batches
        return loader.steps_per_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if pl_module.automatic_optimization:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self.is_enabled:
            bar.n = batch.loader.consumed  # the epoch's mini-batches trained so far
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
