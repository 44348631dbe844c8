"""Section ``textbook``, where the time of a step goes: one epoch of
``experiment=nielsen_ch1`` (batch 10, where the textbooks train) and of the default recipe,
each four ways.

Nielsen's chapter-1 network (784-30-10, sigmoid, quadratic cost, SGD with eta 3.0 on
mini-batches of 10) for one epoch over the same training digits, in the same batch order:

- handprop:   ``python train.py experiment=nielsen_ch1`` in-process, every default callback
              on; its marginal epoch: (a fit of 5 epochs - a fit of 2) / 3, validation and
              checkpoints included, start-up and the first and last pictures not
- network.py: numpy, one digit at a time inside each mini-batch, as chapter 1 writes it
- torch.nn:   ``nn.Linear`` + autograd + ``torch.optim.SGD``, as everyday PyTorch writes it
- raw math:   the same backpropagation in bare tensor ops: no autograd, no optimiser object

The default recipe (``python train.py``: 784-512-256-10 relu, dropout 0.25, cross-entropy
with label smoothing 0.1, AdamW on a one-cycle schedule, batch 128, device augmentation,
normalised pixels) the same four ways, each loop augmenting its batches with handprop's
own ``to_pixels`` and stepping through the same learning rates and momenta: the numpy loop
backpropagates one digit at a time as network.py does, the torch.nn loop is nn.Sequential +
F.cross_entropy + torch.optim.AdamW + OneCycleLR, the raw math writes out the passes and
AdamW's update in tensor ops.

The loops take turns (one epoch each, ``repeats`` rounds) and the medians are compared:
ratios, not seconds, are what carries over between machines.
"""

from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import time

import lightning as L
import numpy as np
import timing
import torch
import torch.nn.functional as F

from handprop.build import build_data_and_model
from handprop.compose import bare_config, compose
from handprop.data import DeviceBatches, to_pixels
from handprop.gate import schedule_length
from handprop.train import train

ETA, BATCH = 3.0, 10


def _digits(overrides) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training split of the experiment's data, as raw [0, 1] pixels (N, 784), labels, seed."""
    cfg = bare_config(["experiment=nielsen_ch1", *overrides])
    dm, _ = build_data_and_model(cfg)
    dm.setup("fit")
    split = dm.splits["train"]
    return split.images.reshape(len(split.labels), -1).float() / 255, split.labels, cfg.seed


def _order(n: int, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """The batch order handprop's loader uses for this epoch (so every loop sees the same batches)."""
    loader = DeviceBatches(torch.zeros(n, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), batch, True, seed)
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


class TorchNN:
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


# --------------------------------------------------------------------------- the default recipe


class DefaultRecipe:
    """Everything the default recipe's loops share for a run of ``epochs`` epochs: the
    sample's training digits (uint8), handprop's batch order of each epoch, the
    augmentation, the pixel statistics, the network's initial weights, and the learning
    rate and AdamW beta1 of every step (the configured one-cycle schedule over the run,
    stepped on a stand-in optimiser). A loop's ``epoch(e)`` trains epoch e."""

    def __init__(self, overrides=(), epochs: int = 1):
        cfg = bare_config([*overrides, f"trainer.max_epochs={epochs}"])
        L.seed_everything(cfg.seed, verbose=False)
        dm, model = build_data_and_model(cfg)
        dm.setup("fit")
        split = dm.splits["train"]
        self.images, self.labels, self.augment = split.images, split.labels, dm.augment
        self.mean, self.std = dm.pixel_stats
        self.batch = dm.batch_size
        # handprop's batch order of each epoch, and the steps of the whole run
        self.epochs = [_order(len(self.labels), cfg.data.seed, e, self.batch).split(self.batch) for e in range(epochs)]
        self.batches = [batch for epoch in self.epochs for batch in epoch]
        self.dropout, self.smoothing = model.hparams.dropout, model.hparams.label_smoothing
        self.weights = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in model.net.layers]
        stand_in = torch.nn.Parameter(torch.zeros(1))
        opt = model.optimizer_factory(params=[stand_in])
        group = opt.param_groups[0]
        self.beta2, self.eps, self.weight_decay = group["betas"][1], group["eps"], group["weight_decay"]
        sched = model.scheduler_factory(opt, **schedule_length(model.scheduler_factory, lambda: len(self.batches)))
        self.schedule = []
        for _ in self.batches:
            self.schedule.append((group["lr"], group["betas"][0]))
            stand_in.grad = torch.zeros(1)
            opt.step()
            sched.step()

    def steps(self, e: int):
        """Epoch e's mini-batches (sample indices) with their learning rates and beta1."""
        first = sum(len(epoch) for epoch in self.epochs[:e])
        return zip(self.epochs[e], self.schedule[first : first + len(self.epochs[e])])

    def pixels(self, i: torch.Tensor) -> torch.Tensor:
        """Mini-batch i's digits, augmented as handprop's loader does it, normalised, flat."""
        return ((to_pixels(self.images[i], self.augment) - self.mean) / self.std).flatten(1)


class DefaultNumpy:
    """The default recipe written the way network.py is: numpy, column vectors, float64,
    backpropagation one digit at a time inside each mini-batch (dropout masks per digit),
    then AdamW's update."""

    def __init__(self, recipe: DefaultRecipe):
        self.r = recipe
        self.weights = [w.double().numpy().copy() for w, _ in recipe.weights]
        self.biases = [b.double().numpy()[:, None].copy() for _, b in recipe.weights]
        self.moments = [[np.zeros_like(p), np.zeros_like(p)] for p in self.weights + self.biases]
        self.rng = np.random.default_rng(0)
        self.t = 0

    def epoch(self, e: int) -> None:
        for i, (lr, beta1) in self.r.steps(e):
            x = self.r.pixels(i).double().numpy()[:, :, None]
            self.update_mini_batch(x, self.r.labels[i].numpy(), lr, beta1)

    def update_mini_batch(self, xs, labels, lr: float, beta1: float) -> None:
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        for x, label in zip(xs, labels):
            delta_w, delta_b = self.backprop(x, label)
            nabla_w = [nw + d for nw, d in zip(nabla_w, delta_w)]
            nabla_b = [nb + d for nb, d in zip(nabla_b, delta_b)]
        self.t += 1
        grads = [g / len(labels) for g in nabla_w + nabla_b]
        params = self.weights + self.biases
        for p, g, (m, v) in zip(params, grads, self.moments):  # AdamW (decoupled weight decay)
            p *= 1 - lr * self.r.weight_decay
            m[:] = beta1 * m + (1 - beta1) * g
            v[:] = self.r.beta2 * v + (1 - self.r.beta2) * g * g
            m_hat, v_hat = m / (1 - beta1**self.t), v / (1 - self.r.beta2**self.t)
            p -= lr * m_hat / (np.sqrt(v_hat) + self.r.eps)

    def backprop(self, x, label: int):
        keep = 1 - self.r.dropout
        activation, activations, masks = x, [x], []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            mask = (self.rng.random((w.shape[0], 1)) < keep) / keep
            activation = np.maximum(w @ activation + b, 0) * mask
            activations.append(activation)
            masks.append(mask)
        z = self.weights[-1] @ activation + self.biases[-1]
        p = np.exp(z - z.max())
        p /= p.sum()
        k = len(p)
        target = np.full((k, 1), self.r.smoothing / k)
        target[label] += 1 - self.r.smoothing
        delta = p - target  # d(cross-entropy of softmax)/dz
        nabla_w, nabla_b = [None] * len(self.weights), [None] * len(self.weights)
        nabla_w[-1], nabla_b[-1] = delta @ activations[-1].T, delta
        for layer in range(len(self.weights) - 2, -1, -1):
            a = activations[layer + 1]
            delta = (self.weights[layer + 1].T @ delta) * (a > 0) * masks[layer]
            nabla_w[layer], nabla_b[layer] = delta @ activations[layer].T, delta
        return nabla_w, nabla_b


class DefaultTorchNN:
    """The default recipe in everyday PyTorch: nn.Sequential, F.cross_entropy, autograd,
    torch.optim.AdamW and OneCycleLR."""

    def __init__(self, recipe: DefaultRecipe):
        self.r = recipe
        layers = []
        for w, b in recipe.weights:
            linear = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                linear.weight.copy_(w)
                linear.bias.copy_(b)
            layers += [linear, torch.nn.ReLU(), torch.nn.Dropout(recipe.dropout)]
        self.net = torch.nn.Sequential(*layers[:-2])
        lr, beta1 = recipe.schedule[0]
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=lr, betas=(beta1, recipe.beta2), eps=recipe.eps, weight_decay=recipe.weight_decay
        )

    def epoch(self, e: int) -> None:
        self.net.train()
        for i, (lr, beta1) in self.r.steps(e):
            for group in self.opt.param_groups:  # the schedule's values (OneCycleLR's, replayed)
                group["lr"], group["betas"] = lr, (beta1, self.r.beta2)
            loss = F.cross_entropy(self.net(self.r.pixels(i)), self.r.labels[i], label_smoothing=self.r.smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


class DefaultRaw:
    """The default recipe's backpropagation and AdamW update in bare tensor ops: no
    autograd, no optimiser object."""

    def __init__(self, recipe: DefaultRecipe):
        self.r = recipe
        self.params = [t.clone() for pair in recipe.weights for t in pair]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def epoch(self, e: int) -> None:
        keep = 1 - self.r.dropout
        n_layers = len(self.params) // 2
        for i, (lr, beta1) in self.r.steps(e):
            x, y = self.r.pixels(i), self.r.labels[i]
            acts, masks = [x], []
            for layer in range(n_layers):
                w, b = self.params[2 * layer], self.params[2 * layer + 1]
                z = torch.addmm(b, acts[-1], w.t())
                if layer < n_layers - 1:
                    mask = (torch.rand_like(z) < keep).float().div_(keep)
                    masks.append(mask)
                    z = z.relu_().mul_(mask)
                acts.append(z)
            k = acts[-1].shape[1]
            delta = torch.softmax(acts[-1], 1).sub_(self.r.smoothing / k)
            delta[torch.arange(len(y)), y] -= 1 - self.r.smoothing
            delta /= len(y)
            grads = [None] * len(self.params)
            for layer in range(n_layers - 1, -1, -1):
                grads[2 * layer], grads[2 * layer + 1] = delta.t() @ acts[layer], delta.sum(0)
                if layer:
                    delta = (delta @ self.params[2 * layer]).mul_(acts[layer] > 0).mul_(masks[layer - 1])
            self.t += 1
            torch._foreach_mul_(self.params, 1 - lr * self.r.weight_decay)
            torch._foreach_lerp_(self.m, grads, 1 - beta1)
            torch._foreach_mul_(self.v, self.r.beta2)
            torch._foreach_addcmul_(self.v, grads, grads, 1 - self.r.beta2)
            denom = torch._foreach_div(torch._foreach_sqrt(self.v), math.sqrt(1 - self.r.beta2**self.t))
            torch._foreach_add_(denom, self.r.eps)
            torch._foreach_addcdiv_(self.params, self.m, denom, -lr / (1 - beta1**self.t))


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


def _handprop_fit(experiment: list[str], overrides, epochs: int) -> tuple[float, float]:
    """The recipe for ``epochs`` epochs as ``python train.py`` runs it (no test, no console
    bar): the last training epoch's seconds, and the whole fit's (validation, checkpoints,
    pictures)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as run_dir:
        cfg = compose(
            [
                *experiment,
                *overrides,
                f"trainer.max_epochs={epochs}",
                "test=false",
                "callbacks.progress_bar=null",
                "trainer.enable_progress_bar=false",
                f"+callbacks.clock._target_={__name__}.TrainingClock",
            ],
            run_dir,
        )
        fit_s = train(cfg)["time/fit_s"]
        last = TrainingClock.seconds[-1]
        TrainingClock.seconds.clear()
        return last, fit_s


def batch10_speed(overrides=(), repeats: int = 3, threads: int = 1, long: int = 5, short: int | None = 2) -> dict:
    """One epoch of nielsen_ch1 by each loop, taking turns, on ``threads`` CPU threads (at
    batch 10 a second thread only adds synchronisation); median seconds and the ratios.
    handprop's epoch is its marginal one, (fit of ``long`` epochs - fit of ``short``) /
    (long - short): everything a run does once (start-up, the first and last pictures) is
    charged to no epoch, every per-epoch cost (validation, checkpoints) to each. (``short``
    None: one fit, its last training epoch -- for a run that only checks the code runs.)"""
    images, labels, seed = _digits(overrides)
    loops = {"network.py": NetworkPy, "torch.nn": TorchNN, "raw_math": RawMath}
    order = _order(len(labels), seed, 0, BATCH)  # handprop's first epoch: every round, every loop
    make = {name: (lambda cls=cls: cls(images, labels, seed)) for name, cls in loops.items()}
    rounds = itertools.count()

    def handprop() -> tuple[float, float]:
        if short is None:
            return _handprop_fit(["experiment=nielsen_ch1"], overrides, long)
        fits = {}
        for epochs in (short, long) if next(rounds) % 2 == 0 else (long, short):
            fits[epochs] = _handprop_fit(["experiment=nielsen_ch1"], overrides, epochs)[1]
        return (fits[long] - fits[short]) / (long - short), fits[long]

    r = _four_loops(handprop, make, [order], len(labels) // BATCH, repeats, threads)
    marginal = f"marginal: (fit of {long} epochs - fit of {short}) / {long - short}" if short else None
    r["handprop_epoch"] = marginal or f"the last training epoch of a {long}-epoch fit"
    return {"recipe": "experiment=nielsen_ch1 " + " ".join(overrides), "digits": len(labels), **r}


def default_recipe_speed(overrides=(), repeats: int = 5, threads: int = 1) -> dict:
    """The second epoch of a two-epoch run of the default recipe by each loop, taking turns
    (see the module docstring). At 32 steps an epoch, a first epoch is as much warm-up
    (allocations, the audit of step 0) as training; every loop trains the first untimed."""
    recipe = DefaultRecipe(overrides, epochs=2)
    loops = {"network.py": DefaultNumpy, "torch.nn": DefaultTorchNN, "raw_math": DefaultRaw}
    make = {name: (lambda cls=cls: cls(recipe)) for name, cls in loops.items()}
    r = _four_loops(lambda: _handprop_fit([], overrides, 2), make, [0, 1], len(recipe.epochs[1]), repeats, threads)
    r["handprop_epoch"] = "the second training epoch of a two-epoch run"
    return {"recipe": "the default recipe " + " ".join(overrides), "digits": len(recipe.labels), **r}


def _four_loops(handprop, make: dict, epochs: list, steps: int, repeats: int, threads: int) -> dict:
    """``repeats`` turns of handprop's epoch (``handprop()``: its seconds and a whole fit's)
    and of each loop from fresh weights over ``epochs`` (what its ``epoch`` takes), the last
    epoch timed."""

    def fresh(new):
        def run() -> float:
            loop = new()  # fresh weights every round
            for epoch in epochs[:-1]:
                loop.epoch(epoch)
            start = time.perf_counter()
            loop.epoch(epochs[-1])
            return time.perf_counter() - start

        return run

    with timing.threads(threads) as threads:
        turns = timing.take_turns({"handprop": handprop, **{name: fresh(new) for name, new in make.items()}}, repeats)
    seconds = {name: [t[0] for t in s] if name == "handprop" else s for name, s in turns.items()}
    median = timing.medians(seconds)
    return {
        "steps": steps,
        "epochs": len(epochs),
        "threads": threads,
        "repeats": repeats,
        "epoch_s": median,
        "raw_epoch_s": seconds,
        "handprop_fit_s": statistics.median(fit for _, fit in turns["handprop"]),
        "steps_per_s": {name: steps / s for name, s in median.items()},
        "handprop_vs_raw_math": median["handprop"] / median["raw_math"],
        "network_py_vs_handprop": median["network.py"] / median["handprop"],
        "handprop_vs_torch_nn": median["handprop"] / median["torch.nn"],
    }


def measure(args) -> dict:
    """nielsen_ch1 on ``args.mnist_overrides`` (full MNIST where it is installed), and the
    default recipe; --quick: one round, one fit of one epoch for handprop's (the code runs,
    nothing is measured), the default recipe at one hidden layer of 16 (the per-digit numpy
    loop at the default size takes seconds)."""
    if args.quick:
        return {
            "batch10": batch10_speed(args.mnist_overrides, repeats=1, long=1, short=None),
            "default_recipe": default_recipe_speed(("model.hidden=[16]",), repeats=1),
        }
    return {"batch10": batch10_speed(args.mnist_overrides, repeats=5), "default_recipe": default_recipe_speed()}


def _report_one(r: dict) -> str:
    which = "one epoch" if r["epochs"] == 1 else f"the last of {r['epochs']} epochs"
    rows = [{"loop": name, "s": r["epoch_s"][name], "rate": r["steps_per_s"][name]} for name in r["epoch_s"]]
    return "\n".join(
        [
            f"\nFour loops, {which} of {r['recipe'].strip()} ({r['digits']:,} digits, {r['steps']:,} steps; "
            f"median of {r['repeats']}, taking turns, {timing.plural(r['threads'], 'CPU thread')}; "
            f"handprop's epoch: {r['handprop_epoch']})",
            timing.table(
                rows, [("loop", "loop", "<10"), ("seconds per epoch", "s", ">17.3f"), ("steps/s", "rate", ">8,.0f")]
            ),
            f"handprop takes {r['handprop_vs_raw_math']:.2f}x the raw math's time and {r['handprop_vs_torch_nn']:.2f}x "
            f"the torch.nn loop's; the network.py-style loop takes {r['network_py_vs_handprop']:.2f}x handprop's. "
            f"handprop's whole fit, with validation, checkpoints and pictures: {r['handprop_fit_s']:.2f} s",
        ]
    )


def report(r: dict) -> str:
    return _report_one(r["batch10"]) + "\n" + _report_one(r["default_recipe"])
