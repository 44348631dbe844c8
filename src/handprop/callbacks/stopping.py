"""Early stopping: Nielsen's no-improvement-in-n rule, on Lightning's ``EarlyStopping``.

"Compute the classification accuracy on the validation data at the end of each epoch.
When the classification accuracy stops improving, terminate" -- and since accuracy jumps
around, "stop if the accuracy hasn't improved in, say, ten epochs" (Nielsen, "Neural
Networks and Deep Learning", chapter 3, "How to choose a neural network's
hyper-parameters"). ``callbacks.early_stopping.patience=10`` is that rule; ``null`` (the
default) trains every epoch of ``trainer.max_epochs``.

A schedule shaped for a fixed number of epochs (one-cycle, cosine) and early stopping do
not mix: the config gate refuses the pair (``gate/across.py``).
"""

from __future__ import annotations

import functools
import logging

import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from ..console import percent

log = logging.getLogger("handprop.run")


class EarlyStopping(LightningEarlyStopping):
    """Stops training once ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` validated epochs in a row; ``patience=None``: never.

    The run's log says when and why it stopped, and metrics.json holds the numbers
    (``numbers``). Its counters travel in checkpoints: a resumed run keeps counting
    where it was."""

    def __init__(
        self, patience: int | None = None, monitor: str = "val/acc", mode: str = "max", min_delta: float = 0.0
    ):
        # checked after validation (not at the end of the training epoch): the metric is that epoch's
        super().__init__(monitor, min_delta, patience or 1, mode=mode, check_on_train_epoch_end=False)
        self.enabled = patience is not None
        self.best_epoch = 0  # 1-based; 0: none yet

    @functools.cached_property
    def state_key(self) -> str:
        # Composed once (Lightning asks for it at every hook it calls, several times a step)
        return LightningEarlyStopping.state_key.fget(self)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        before = self.best_score.clone()
        super().on_validation_end(trainer, pl_module)
        if not torch.equal(self.best_score, before):  # this epoch improved on the best
            self.best_epoch = trainer.current_epoch + 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not (self.enabled and self.stopped_epoch):
            return
        # for metrics.json: in callback_metrics, which trainer=ddp_spawn's workers hand back
        trainer.callback_metrics.update({key: torch.tensor(float(value)) for key, value in self.numbers().items()})
        if trainer.is_global_zero:  # (said when training ends, after the run log's line for the last epoch)
            log.info("early stopping: %s", self.why(self.stopped_epoch + 1))

    def numbers(self) -> dict[str, float]:
        """The stop for metrics.json: the (1-based) epoch it stopped after, the best epoch,
        and -- when that was the reason -- the patience that ran out."""
        out = {"early_stopping/stopped_epoch": self.stopped_epoch + 1, "early_stopping/best_epoch": self.best_epoch}
        if self.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            out["early_stopping/patience"] = self.patience
        return out

    def why(self, epoch: int) -> str:
        """The stop in words: after which epoch, and the rule that ended the run."""
        best = float(self.best_score)
        shown = percent(best) if "acc" in self.monitor else f"{best:.4f}"
        if self.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            return (
                f"stopped after epoch {epoch}: {self.monitor} has not improved for {self.wait_count} validated "
                f"epochs (patience {self.patience}); best {shown} at epoch {self.best_epoch}"
            )
        return f"stopped after epoch {epoch}: {self.stopping_reason_message}"

    def state_dict(self) -> dict:
        if not self.enabled:  # (nothing to carry: a resume that turns it on starts counting then)
            return {}
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run keeps counting where it was, with its own patience (Lightning's
        would restore the checkpoint's), and has not stopped yet."""
        if not self.enabled or not state_dict:
            return
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
        self.best_epoch = state_dict.get("best_epoch", 0)
        self.stopped_epoch, self.stopping_reason, self.stopping_reason_message = (
            0,
            EarlyStoppingReason.NOT_STOPPED,
            None,
        )
