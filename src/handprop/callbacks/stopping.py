"""Early stopping: Nielsen's no-improvement-in-n rule, on Lightning's ``EarlyStopping``.

"Compute the classification accuracy on the validation data at the end of each epoch.
When the classification accuracy stops improving, terminate" -- and since accuracy jumps
around, "stop if the accuracy hasn't improved in, say, ten epochs" (Nielsen, "Neural
Networks and Deep Learning", chapter 3, "How to choose a neural network's
hyper-parameters"). ``callbacks.early_stopping.patience=10`` is that rule; ``null`` (the
default) trains every epoch of ``trainer.max_epochs``.

A schedule shaped for a fixed number of epochs (one-cycle, cosine) and early stopping do
not mix: the config check refuses the pair (``config.py``).
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from ..console import percent
from ..rules import POSITIVE_INT_OR_NULL, is_number, positive_int, require

log = logging.getLogger("handprop.run")


class EarlyStopping(LightningEarlyStopping):
    """Stops training once ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` validated epochs in a row; ``patience=None``: never.

    The run's log says when and why it stopped; ``stopping_metrics`` gives train() the
    numbers for metrics.json. Its counters travel in checkpoints: a resumed run keeps
    counting where it was."""

    def __init__(
        self, patience: int | None = None, monitor: str = "val/acc", mode: str = "max", min_delta: float = 0.0
    ):
        require(patience is None or positive_int(patience), "patience", patience, POSITIVE_INT_OR_NULL)
        require(is_number(min_delta) and min_delta >= 0, "min_delta", min_delta, "must be a number >= 0")
        require(mode in ("min", "max"), "mode", mode, "must be min or max")
        # checked after validation (not at the end of the training epoch): the metric is that epoch's
        super().__init__(monitor, min_delta, patience or 1, mode=mode, check_on_train_epoch_end=False)
        self.enabled = patience is not None
        self.best_epoch = 0  # 1-based; 0: none yet

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)

    def _run_early_stopping_check(self, trainer) -> None:
        super()._run_early_stopping_check(trainer)
        if self.wait_count == 0 and self.monitor in trainer.callback_metrics:
            self.best_epoch = trainer.current_epoch + 1

    def on_train_end(self, trainer, pl_module) -> None:
        # (said when training ends, after the run log's line for the last epoch)
        if self.enabled and self.stopped_epoch and trainer.is_global_zero:
            log.info("early stopping: %s", self.why(self.stopped_epoch + 1))

    def why(self, epoch: int) -> str:
        """The stop in words: after which epoch, and the rule that ended the run."""
        best = float(self.best_score)
        shown = percent(best) if "acc" in self.monitor else f"{best:.4f}"
        if self.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            return (
                f"stopped after epoch {epoch}: {self.monitor} has not improved for {self.wait_count} epochs "
                f"(patience {self.patience}); best {shown} at epoch {self.best_epoch}"
            )
        return f"stopped after epoch {epoch}: {self.stopping_reason_message}"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch", 0)


def stopping_metrics(trainer) -> dict[str, float]:
    """For metrics.json, when a run stopped early: the (1-based) epoch it stopped after, the
    best epoch, and the patience that ran out."""
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.enabled and callback.stopped_epoch:
            return {
                "early_stopping/stopped_epoch": float(callback.stopped_epoch + 1),
                "early_stopping/best_epoch": float(callback.best_epoch),
                "early_stopping/patience": float(callback.patience),
            }
    return {}
