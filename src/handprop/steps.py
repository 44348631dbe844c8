"""What a training step carries besides its math: where it began (the random generators'
states and its mini-batch), and which steps write their scalars."""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch
from lightning.pytorch.profilers import PassThroughProfiler


class StepInProgress:
    """Where the optimiser step in progress began: the random generators' states (its
    augmentation and dropout draw from them) and its mini-batch. An interrupt inside the
    step checkpoints these states, so the resumed run repeats the step exactly; the
    gradient audit replays the step from them."""

    def __init__(self):
        self.rng, self.chunk, self.index = None, None, 0

    def begin(self, chunk, index: int) -> None:
        self.rng, self.chunk, self.index = rng_states(), chunk, index

    def end(self) -> None:
        self.rng = self.chunk = None


def rng_states() -> dict:
    """The global random generators' states: the CPU's, and every GPU's once CUDA is in use."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def logs_this_step(trainer: L.Trainer, every_n_steps: int | None = None) -> bool:
    """Before optimiser step k (trainer.global_step == k, counted from 0): whether step k is
    one to log, (k + 1) % n == 0 -- Lightning's own rule for writing step scalars with
    n = trainer.log_every_n_steps (the default); never when n == 0."""
    n = trainer.log_every_n_steps if every_n_steps is None else every_n_steps
    return n > 0 and (trainer.global_step + 1) % n == 0


def run_steps(trainer: L.Trainer) -> int | float:
    """How many optimiser steps the run takes, infinite for an unlimited run. Lightning's
    estimate counts its batches: chunks of mini-batches, with handprop's loader."""
    batches = trainer.estimated_stepping_batches  # (sets the training loader up)
    loader = trainer.train_dataloader
    chunk = getattr(loader, "chunk", 1)
    if chunk == 1 or math.isinf(batches) or trainer.max_epochs in (None, -1):
        return batches  # (a chunk of one: Lightning's count, limit_train_batches included)
    per_epoch = min(loader.steps_per_epoch, trainer.num_training_batches * chunk)  # (fewer batches: fewer steps)
    return min(per_epoch * trainer.max_epochs, trainer.max_steps if trainer.max_steps >= 0 else math.inf)


class NoProfiler(PassThroughProfiler):
    """Lightning's default when nothing is profiled (``trainer.profiler: null``), without a
    generator-made context for every call: Lightning wraps each hook it calls on each
    callback -- some 35 times an optimiser step -- in ``profiler.profile()``, 2 us a time on a
    CPU, a tenth of a textbook network's step."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NOTHING


_NOTHING = contextlib.nullcontext()
