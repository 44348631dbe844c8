"""Batch 10, where the textbooks train: one epoch of ``experiment=nielsen_ch1`` four ways.

Nielsen's chapter-1 network (784-30-10, sigmoid, quadratic cost, SGD with eta 3.0 on
mini-batches of 10) for one epoch over the same training digits, in the same batch order:

- handprop:   ``python train.py experiment=nielsen_ch1 trainer.max_epochs=1`` in-process,
              every default callback on; its training epoch is timed (``TrainingClock``)
- network.py: numpy, one digit at a time inside each mini-batch, as chapter 1 writes it
- plain loop: ``nn.Linear`` + autograd + ``torch.optim.SGD``
- raw math:   the same backpropagation in bare tensor ops: no autograd, no optimiser object

The loops take turns (one epoch each, ``repeats`` rounds) and the medians are compared:
ratios, not seconds, are what carries over between machines.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import lightning as L
import numpy as np
import torch

from handprop.build import build_data_and_model
from handprop.compose import compose
from handprop.data import DeviceBatches
from handprop.train import train

ETA, BATCH = 3.0, 10


def _digits(overrides) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training split of the experiment's data, as raw [0, 1] pixels (N, 784), labels, seed."""
    cfg = compose(["experiment=nielsen_ch1", *overrides])
    dm, _ = build_data_and_model(cfg)
    dm.setup("fit")
    split = dm.splits["train"]
    return split.images.reshape(len(split.labels), -1).float() / 255, split.labels, cfg.seed


def _order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The batch order handprop's loader uses for this epoch (so every loop sees the same batches)."""
    loader = DeviceBatches(torch.zeros(n, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), BATCH, True, seed)
    loader.set_epoch(epoch)
    return loader.indices()


class NetworkPy:
    """Nielsen's network.py, chapter 1: column vectors, float64, backprop one digit at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int):
        rng = np.random.default_rng(seed)
        self.sizes = [784, 30, 10]
        self.biases = [rng.standard_normal((y, 1)) for y in self.sizes[1:]]
        self.weights = [rng.standard_normal((y, x)) for x, y in zip(self.sizes[:-1], self.sizes[1:])]
        self.x = images.double().numpy()[:, :, None]
        self.y = np.eye(10)[labels.numpy()][:, :, None]

    def epoch(self, order: torch.Tensor) -> None:
        order = order.numpy()
        for k in range(0, len(order) - len(order) % BATCH, BATCH):
            self.update_mini_batch(order[k : k + BATCH])

    def update_mini_batch(self, batch) -> None:
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for i in batch:
            delta_b, delta_w = self.backprop(self.x[i], self.y[i])
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_w)]
        self.weights = [w - (ETA / len(batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (ETA / len(batch)) * nb for b, nb in zip(self.biases, nabla_b)]

    def backprop(self, x, y):
        activation, activations, zs = x, [x], []
        for b, w in zip(self.biases, self.weights):
            z = w @ activation + b
            zs.append(z)
            activation = 1 / (1 + np.exp(-z))
            activations.append(activation)
        s = activations[-1]
        delta = (s - y) * s * (1 - s)
        nabla_b, nabla_w = [None, delta], [None, delta @ activations[-2].T]
        s = activations[-2]
        delta = (self.weights[-1].T @ delta) * s * (1 - s)
        nabla_b[0], nabla_w[0] = delta, delta @ activations[0].T
        return nabla_b, nabla_w


class PlainLoop:
    """The chapter's network in everyday PyTorch: nn.Linear, autograd, torch.optim.SGD."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int):
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(784, 30), torch.nn.Sigmoid(), torch.nn.Linear(30, 10), torch.nn.Sigmoid()
        )
        with torch.no_grad():  # N(0, 1), as network.py draws them
            for p in self.net.parameters():
                p.normal_()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=ETA)
        self.x, self.y = images, torch.nn.functional.one_hot(labels, 10).float()

    def epoch(self, order: torch.Tensor) -> None:
        for k in range(0, len(order) - len(order) % BATCH, BATCH):
            i = order[k : k + BATCH]
            loss = 0.5 * (self.net(self.x[i]) - self.y[i]).pow(2).sum(1).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


class RawMath:
    """Backpropagation written out in tensor ops: the four equations and an in-place update."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.w1, self.b1 = torch.randn(30, 784, generator=g), torch.randn(30, generator=g)
        self.w2, self.b2 = torch.randn(10, 30, generator=g), torch.randn(10, generator=g)
        self.x, self.y = images, torch.nn.functional.one_hot(labels, 10).float()

    @torch.no_grad()
    def epoch(self, order: torch.Tensor) -> None:
        w1, b1, w2, b2, step = self.w1, self.b1, self.w2, self.b2, ETA / BATCH
        for k in range(0, len(order) - len(order) % BATCH, BATCH):
            i = order[k : k + BATCH]
            x = self.x[i]
            a1 = torch.sigmoid(torch.addmm(b1, x, w1.T))
            a2 = torch.sigmoid(torch.addmm(b2, a1, w2.T))
            d2 = (a2 - self.y[i]) * a2 * (1 - a2)  # dC/dz2, summed over the batch below
            d1 = (d2 @ w2) * a1 * (1 - a1)
            w2.sub_(d2.T @ a1, alpha=step)
            b2.sub_(d2.sum(0), alpha=step)
            w1.sub_(d1.T @ x, alpha=step)
            b1.sub_(d1.sum(0), alpha=step)


class TrainingClock(L.Callback):
    """The seconds of each training epoch (its steps and every per-step callback), without
    the validation, checkpoints and pictures that follow it: what the other loops do."""

    seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        TrainingClock.seconds.append(self.end - self.start)


def _handprop_epoch(overrides) -> tuple[float, float]:
    """One epoch of the experiment as ``python train.py`` runs it (no test, no console bar):
    the training epoch's seconds, and the whole fit's (validation, checkpoints, pictures)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as run_dir:
        cfg = compose(
            [
                "experiment=nielsen_ch1",
                *overrides,
                "trainer.max_epochs=1",
                "test=false",
                "callbacks.progress_bar=null",
                "trainer.enable_progress_bar=false",
                f"+callbacks.clock._target_={__name__}.TrainingClock",
            ],
            run_dir,
        )
        fit_s = train(cfg)["time/fit_s"]
        return TrainingClock.seconds.pop(), fit_s


def batch10_speed(overrides=(), repeats: int = 3, threads: int = 1) -> dict:
    """One epoch of nielsen_ch1 by each loop, taking turns, on ``threads`` CPU threads (at
    batch 10 a second thread only adds synchronisation); median seconds and the ratios."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _batch10_speed(overrides, repeats)
    finally:
        torch.set_num_threads(before)


def _batch10_speed(overrides, repeats: int) -> dict:
    images, labels, seed = _digits(overrides)
    loops = {"network.py": NetworkPy, "plain_loop": PlainLoop, "raw_math": RawMath}
    seconds: dict[str, list[float]] = {"handprop": [], **{name: [] for name in loops}}
    fit_s = []
    order = _order(len(labels), seed, 0)  # handprop's first epoch: every round, every loop, from fresh weights
    for _ in range(repeats):
        train_s, whole = _handprop_epoch(overrides)
        seconds["handprop"].append(train_s)
        fit_s.append(whole)
        for name, cls in loops.items():
            loop = cls(images, labels, seed)
            start = time.perf_counter()
            loop.epoch(order)
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "recipe": "experiment=nielsen_ch1 " + " ".join(overrides),
        "digits": len(labels),
        "steps": len(labels) // BATCH,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "epoch_s": median,
        "handprop_fit_s": statistics.median(fit_s),
        "steps_per_s": {name: (len(labels) // BATCH) / s for name, s in median.items()},
        "handprop_vs_raw_math": median["handprop"] / median["raw_math"],
        "network_py_vs_handprop": median["network.py"] / median["handprop"],
    }


def report(r: dict) -> str:
    lines = [
        f"\nBatch 10, one epoch of {r['recipe']} ({r['digits']:,} digits, {r['steps']:,} steps; "
        f"median of {r['repeats']}, taking turns, {r['threads']} CPU threads)",
        "loop | seconds per epoch | steps/s",
        "--- | --- | ---",
    ]
    for name in ("handprop", "network.py", "plain_loop", "raw_math"):
        lines.append(f"{name:<11} | {r['epoch_s'][name]:>8.2f} | {r['steps_per_s'][name]:>8,.0f}")
    lines.append(
        f"handprop is {r['handprop_vs_raw_math']:.1f}x the raw math's time; network.py takes "
        f"{r['network_py_vs_handprop']:.2f}x handprop's (goals: <= 2.5x, >= 2.5x). handprop's whole "
        f"one-epoch fit, with validation, checkpoints and pictures: {r['handprop_fit_s']:.2f} s"
    )
    return "\n".join(lines)
