"""The per-layer scalars of the vanishing-gradient story: gradient norms and update ratios."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..steps import logs_this_step


def layers_of(pl_module) -> list:
    """The network's layers, numbered from 1 in tags (layer1 takes the pixels)."""
    return list(pl_module.net.layers)


def write_scalars(trainer: L.Trainer, values: dict[str, torch.Tensor], step: int) -> None:
    """Straight to the loggers, one host sync for all values (Lightning's self.log syncs and
    aggregates each value on its own; these are logged on few steps anyway)."""
    if not trainer.is_global_zero or not trainer.loggers or not values:
        return
    floats = dict(zip(values, torch.stack(list(values.values())).float().tolist()))
    for logger in trainer.loggers:
        logger.log_metrics(floats, step=step)


class TrainingScalars(Callback):
    """The scalars of the vanishing-gradient story, for TensorBoard.

    Every ``every_n_steps`` optimiser steps (None: ``trainer.log_every_n_steps``), for every layer:

        weights/grad_norm/layer<i>     |∂C/∂W|, |∂C/∂b| together: the size of the gradient
                                       the layer receives (sigmoid networks starve their first layers)
        weights/update_ratio/layer<i>  |ΔW| / |W| of that step: how fast the weights move
                                       (about 1e-3 is healthy; 1e-1 is a learning rate too high)

    (The epoch's time and speed: ``RunLog``.)
    """

    def __init__(self, every_n_steps: int | None = None):
        self.every_n_steps = every_n_steps
        self._before: list[torch.Tensor] | None = None  # the weights before a logged step
        self._grad_norms: torch.Tensor | None = None
        self._pending_step: int | None = None  # the logged step, until it has been taken

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._pending_step = None

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts without an epoch start

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not logs_this_step(trainer, self.every_n_steps):
            return
        layers = layers_of(pl_module)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in pl_module.net.weights_and_biases()]
        self._grad_norms = _norms(grads).view(len(layers), 2).norm(dim=1)  # |dW, db|
        # the weights before the step, copied into buffers kept from step to step
        if self._before is None or [w.shape for w in self._before] != [layer.weight.shape for layer in layers]:
            self._before = [layer.weight.detach().clone() for layer in layers]
        else:
            for before, layer in zip(self._before, layers):
                before.copy_(layer.weight.detach())
        self._pending_step = trainer.global_step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._write_pending(trainer, pl_module)  # the logged step has been taken since

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._write_pending(trainer, pl_module)

    def _write_pending(self, trainer, pl_module) -> None:
        if self._pending_step is None or trainer.global_step <= self._pending_step:  # (not taken yet)
            return
        layers = layers_of(pl_module)
        change = _norms([layer.weight.detach() - before for layer, before in zip(layers, self._before)])
        ratios = change / _norms(self._before).clamp_min(1e-12)
        numbers = range(1, len(layers) + 1)
        names = [f"weights/{kind}/layer{i}" for kind in ("grad_norm", "update_ratio") for i in numbers]
        write_scalars(trainer, dict(zip(names, torch.cat([self._grad_norms, ratios.float()]))), self._pending_step)
        self._pending_step = None


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The Euclidean length of each tensor, as a float32 vector, on the device. (Lightning's
    ``grad_norm`` gathers its per-parameter norms into a new tensor through the host, one
    copy -- on a GPU one sync -- per parameter; these are read in one transfer, per layer.)"""
    return torch.stack([torch.linalg.vector_norm(t) for t in tensors]).float()
