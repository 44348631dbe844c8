"""What one training step costs at batch 10, and what of it is Lightning's: experiment=nielsen_ch1
(784-30-10 sigmoid, quadratic cost, SGD) trained by ``train(cfg)`` with every default
callback, its training step swapped for variants that differ in one call each:

- raw:              MLPFunction forward, ``loss.backward()``, the torch optimiser's own ``step()``
- manual_backward:  ``self.manual_backward(loss)`` instead of ``loss.backward()``
- lightning_step:   ``LightningOptimizer.step()`` instead of the torch optimiser's
- documented:       both, and ``optimizer.zero_grad()``: Lightning's manual optimisation as its docs write it
- handprop:         ``DigitClassifier.training_step`` itself (the documented path, less
                    zero_grad's profiling record, plus the step's bookkeeping: the random
                    generators where it began, the metrics, the logged steps)

Each variant trains the same chunks of mini-batches (``model.chunk``: 256 steps a Lightning
batch); its time per step is the time inside training_step over the steps taken. The
variants take turns, one epoch each, and the median of the rounds is reported.
"""

from __future__ import annotations

import tempfile
import time

import timing
import torch
from omegaconf import open_dict

from handprop.compose import compose
from handprop.module import DigitClassifier
from handprop.train import train

VARIANTS = ("raw", "manual_backward", "lightning_step", "documented", "handprop")


class Timed(DigitClassifier):
    """DigitClassifier whose training step is one of VARIANTS, timed (class-level record)."""

    variant = "handprop"
    seconds: list[float] = []
    steps: list[int] = []

    def training_step(self, chunk, batch_idx: int):
        start = time.perf_counter()
        if self.variant == "handprop":
            out = super().training_step(chunk, batch_idx)
            steps = len(chunk)
        else:
            steps = self._variant_step(chunk)
            chunk.done()
            out = {"digits": len(chunk.labels)}
        Timed.seconds.append(time.perf_counter() - start)
        Timed.steps.append(steps)
        return out

    def _variant_step(self, chunk) -> int:
        lightning_optimizer = self.optimizers()
        raw = self.optimizers(use_pl_optimizer=False)
        backward = self.manual_backward if self.variant in ("manual_backward", "documented") else torch.Tensor.backward
        step = lightning_optimizer.step if self.variant in ("lightning_step", "documented") else raw.step
        for i in range(len(chunk)):
            self.step_in_progress.begin(chunk, i)  # (what the gradient audit replays)
            images, labels = chunk.mini_batch(i)
            _, loss = self.output_and_loss(images, labels)
            if self.variant == "documented":
                lightning_optimizer.zero_grad()
            else:
                raw.zero_grad()
            backward(loss)
            step()
            chunk.trained()
        return len(chunk)


def _fit(variant: str, overrides) -> float:
    """One epoch of nielsen_ch1 with ``variant`` as its training step: microseconds per step."""
    Timed.variant, Timed.seconds, Timed.steps = variant, [], []
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as run_dir:
        cfg = compose(
            [
                "experiment=nielsen_ch1",
                *overrides,
                "trainer.max_epochs=1",
                "test=false",
                "callbacks.progress_bar=null",
                "trainer.enable_progress_bar=false",
                "callbacks.pictures=null",
            ],
            run_dir,
        )
        with open_dict(cfg):
            cfg.model._target_ = f"{__name__}.Timed"
        train(cfg)
    return 1e6 * sum(Timed.seconds) / sum(Timed.steps)


def step_cost(overrides=(), repeats: int = 3, threads: int = 1, variants=VARIANTS) -> dict:
    """Microseconds per optimiser step of each variant (median over ``repeats`` rounds, the
    variants taking turns), one epoch of nielsen_ch1 each."""
    with timing.threads(threads) as threads:
        per_step = timing.take_turns({v: lambda v=v: _fit(v, overrides) for v in variants}, repeats)
    return {
        "recipe": "experiment=nielsen_ch1 " + " ".join(overrides),
        "threads": threads,
        "repeats": repeats,
        "us_per_step": timing.medians(per_step),
    }


def measure(args) -> dict:
    """On ``args.mnist_overrides`` (full MNIST where it is installed: 5,000 steps an epoch);
    --quick: handprop's step alone, one round."""
    return step_cost(args.mnist_overrides, **timing.toy(args, repeats=1, variants=("handprop",)))


def report(r: dict) -> str:
    us = r["us_per_step"]
    first = next(iter(us))
    rows = [{"variant": v, "us": us[v], "vs": us[v] / us[first]} for v in us]
    return (
        f"\nOne training step of {r['recipe'].strip()} inside training_step, every default callback on "
        f"({timing.plural(r['threads'], 'CPU thread')}, median of {r['repeats']}, the variants taking turns); "
        "microseconds per step:\n"
        + timing.table(
            rows, [("variant", "variant", "<15"), ("us/step", "us", ">7.1f"), (f"vs {first}", "vs", ">6.2f")]
        )
    )
