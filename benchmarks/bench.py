"""Benchmarks: ``python benchmarks/bench.py`` (``make bench``) prints a table and writes JSON.

Every figure is a ratio of two things measured in the same process, interleaved
(A, B, B, A, ...) and summarised by the median of several repeats, so that the
machine's drift and noise fall on both sides alike.

backward  our hand-written backward vs PyTorch's autograd on the same network: the
          time of one training step (forward, cost, backward, SGD step) and the bytes
          kept alive for backward, for networks from 784-16-16-10 to 784-1024-1024-10;
          plus the cost of the live gradient audit at its default interval.
gemm      a large MLP's training step (784-1024-1024-10, batch 512, float32) in FLOP/s,
          as a fraction of the machine's measured matrix-product rate.
batch10   one epoch of nielsen_ch1 (batch 10) and of the default recipe four ways
          (textbook.py: handprop, a network.py-style numpy loop, a plain PyTorch loop,
          the raw math), and one training step at batch 10 with each of Lightning's calls
          swapped for the raw torch one (step_cost.py).
epoch     one training epoch of the default recipe: handprop under Lightning with its
          device-resident loader, vs a plain PyTorch loop over the same tensors doing the
          same work (what the framework costs), vs the classic torchvision MNIST +
          DataLoader recipe; and the data path alone, handprop's loader vs torchvision's.
pictures  what the TensorBoard pictures and scalars add to a default run's wall time; the lesson's
          two pictures by themselves, on and off in pairs.
fashion   time to accuracy on full Fashion-MNIST (experiment=fashion_fast and
          fashion_mlp): seconds to 89% test accuracy and the accuracy at the end, handprop
          vs the same network, recipe and data in a plain PyTorch loop.
cli       how long ``python train.py --help`` takes as a user runs it, a fresh process each
          time (a time, not a ratio: the budget is 2 s), and whether it imported torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import step_cost
import textbook
import torch
from torchvision import datasets, transforms

from handprop import functional as HF
from handprop.build import build_data_and_model
from handprop.callbacks import GradientAudit, TensorBoardPictures, TrainingScalars
from handprop.compose import bare_config, compose
from handprop.data import Chunk, DeviceBatches, load_split, to_pixels, write_idx
from handprop.gate import schedule_length
from handprop.module import DigitClassifier
from handprop.nn import MLP
from handprop.train import train

SIZES = ([16, 16], [128, 64], [512, 256], [1024, 1024])
RECIPES = {  # what the network does besides its matrix products
    "default": {"activation": "relu", "dropout": 0.25, "label_smoothing": 0.1},  # conf/model/mlp.yaml
    "plain": {"activation": "relu", "dropout": 0.0, "label_smoothing": 0.0},
}


def saved_bytes(run: Callable[[], object]) -> int:
    """Bytes of distinct storage that autograd keeps for backward while ``run()`` builds its graph.

    Counted with saved-tensor hooks, each storage once: a layer's output that the next
    layer saves as its input is one tensor, not two.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(storages.values())


def interleaved_medians(
    fns: dict[str, Callable[[], None]], repeats: int, number: int, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds per call of each fn over repeats x number calls, the fns taking turns
    call by call (A B, B A, A B, ...) so that the machine's drift falls on all alike.

    ``sync`` waits for queued device work (torch.cuda.synchronize on a GPU)."""
    for fn in fns.values():  # warm-up: allocator, caches, lazy init
        for _ in range(max(2, number // 5)):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(repeats * number):
        for name in names if i % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def backward_vs_autograd(
    hidden, recipe: str, batch: int = 128, repeats: int = 9, seed: int = 0, device: str = "cpu", target_s: float = 0.03
) -> dict:
    torch.manual_seed(seed)
    r = RECIPES[recipe]
    mlp = MLP([784, *hidden, 10], r["activation"], dropout=r["dropout"]).to(device)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.01)
    x, y = torch.randn(batch, 784, device=device), torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def graph(backward: str):  # what a training step computes: output and cost
        mlp.backward = backward
        return mlp(x, y, "cross_entropy", r["label_smoothing"])[1]

    def step(backward: str) -> None:
        opt.zero_grad(set_to_none=True)
        graph(backward).backward()
        opt.step()

    for _ in range(3):
        step("autograd")
    sync()
    start = time.perf_counter()
    step("autograd")
    sync()
    number = max(3, int(target_s / (time.perf_counter() - start)))  # calls for ~target_s a repeat
    t = interleaved_medians({m: (lambda m=m: step(m)) for m in HF.BACKWARDS}, repeats, number, sync)
    mem = {m: saved_bytes(lambda m=m: graph(m)) for m in HF.BACKWARDS}
    return {
        "network": "-".join(map(str, [784, *hidden, 10])),
        "recipe": recipe,
        "batch": batch,
        "device": device,
        "step_ms_manual": t["manual"] * 1e3,
        "step_ms_autograd": t["autograd"] * 1e3,
        "speed_ratio": t["autograd"] / t["manual"],  # > 1: ours is faster
        "saved_bytes_manual": mem["manual"],
        "saved_bytes_autograd": mem["autograd"],
        "memory_ratio": mem["manual"] / mem["autograd"],  # < 1: ours keeps less
    }


def audit_overhead(every_n_steps: int = 100, batch: int = 128, repeats: int = 9, number: int = 5) -> dict:
    """Time of one gradient audit relative to the training steps between two audits."""

    torch.manual_seed(0)
    model = DigitClassifier(dropout=0.25, label_smoothing=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )  # one process, float32
    audit = GradientAudit(every_n_steps)

    def step():
        opt.zero_grad(set_to_none=True)
        model.output_and_loss(images, labels)[1].backward()
        opt.step()

    model.step_in_progress.begin(Chunk(images, labels, batch), 0)  # the step the audit replays
    step()
    manual = [p.grad for layer in model.net.layers for p in (layer.weight, layer.bias)]
    t = interleaved_medians(
        {"step": step, "audit": lambda: audit.relative_errors(trainer, model, manual=manual)}, repeats, number
    )
    return {
        "network": "784-512-256-10",
        "every_n_steps": every_n_steps,
        "audit_ms": t["audit"] * 1e3,
        "step_ms": t["step"] * 1e3,
        "overhead_pct": 100 * t["audit"] / (every_n_steps * t["step"]),
    }


# --------------------------------------------------------------------------- gemm


def gemm_fraction(batch: int = 512, hidden=(1024, 1024), repeats: int = 9, square: int = 2048) -> dict:
    """FLOP/s of a training step against the machine's own matrix-product rate."""
    torch.manual_seed(0)
    sizes = [784, *hidden, 10]
    mlp = MLP(sizes, "relu")
    opt = torch.optim.SGD(mlp.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    layers = list(zip(sizes, sizes[1:]))
    # forward x Wᵀ and dW = dzᵀ x for every layer, dx = dz W for all but the first
    flops = 2 * batch * (2 * sum(a * b for a, b in layers) + sum(a * b for a, b in layers[1:]))
    a, b = torch.randn(square, square), torch.randn(square, square)

    def step():
        opt.zero_grad(set_to_none=True)
        mlp(x, y)[1].backward()
        opt.step()

    t = interleaved_medians({"step": step, "gemm": lambda: a @ b}, repeats, 3)
    peak, achieved = 2 * square**3 / t["gemm"], flops / t["step"]
    return {
        "network": "-".join(map(str, sizes)),
        "batch": batch,
        "step_ms": t["step"] * 1e3,
        "step_gflops": achieved / 1e9,
        "gemm_gflops": peak / 1e9,
        "fraction_of_gemm": achieved / peak,
        "gemm_size": square,
    }


# --------------------------------------------------------------------------- epochs


def _sync(device) -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _build(cfg, device="cpu"):
    """Data module (set up) and model (on ``device``) of a composed config, built by the
    code ``python train.py`` builds them with."""
    dm, model = build_data_and_model(cfg)
    dm.setup("fit")
    model.pixel_mean.fill_(dm.pixel_stats[0])
    model.pixel_std.fill_(dm.pixel_stats[1])
    return dm, model.to(device)


class _EpochClock(L.Callback):
    """Training time of every epoch, and (``snapshots``) a copy of the weights after it.

    ``between(epoch)``, when given, runs after each epoch's clock has stopped: the epoch
    benchmark runs its competitors there, so that Lightning's epochs and theirs take turns."""

    def __init__(self, snapshots: bool = False, between: Callable[[int], None] | None = None):
        self.snapshots, self.between, self.epoch_s, self.states = snapshots, between, [], []

    def on_train_epoch_start(self, trainer, pl_module):
        _sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(pl_module.device)
        self.epoch_s.append(time.perf_counter() - self.start)
        if self.snapshots:
            self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
        if self.between is not None:
            self.between(trainer.current_epoch)


def lightning_epochs(
    cfg, epochs: int, snapshots: bool = False, between: Callable[[int], None] | None = None, device="cpu"
):
    """Fit the recipe under Lightning (no validation, no logging): seconds per epoch (+ weights)."""
    L.seed_everything(cfg.seed, verbose=False)
    dm, model = _build(cfg)
    device = torch.device(device)
    clock = _EpochClock(snapshots, between)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(model, datamodule=dm)
    return clock.epoch_s, clock.states, model


class PlainLoop:
    """The same recipe as a plain PyTorch loop over the same uint8 tensors, the same
    batch order, model, optimiser, schedule and augmentation: ``epoch()`` trains one."""

    def __init__(self, cfg, epochs: int, device="cpu"):
        L.seed_everything(cfg.seed, verbose=False)
        dm, self.model = _build(cfg, device)
        train, self.augment, self.device = dm.splits["train"], dm.augment, device
        images, labels = train.images.to(device), train.labels.to(device)
        self.batches = DeviceBatches(images, labels, dm.batch_size, shuffle=True, seed=cfg.seed)
        self.opt = self.model.optimizer_factory(params=self.model.parameters())
        factory = self.model.scheduler_factory
        length = schedule_length(factory, lambda: epochs * len(self.batches)) if factory else {}
        self.sched = factory(self.opt, **length) if factory else None
        self.epochs_done = 0

    def epoch(self) -> float:
        """Seconds for one epoch, with the bookkeeping a run reports: the epoch's mean loss
        and accuracy, counted by the same torchmetrics objects as the Lightning module's."""
        model, opt, sched = self.model, self.opt, self.sched
        losses, hits = model.metrics["train_loss"], model.metrics["train_acc"]
        model.train()
        _sync(self.device)
        start = time.perf_counter()
        self.batches.set_epoch(self.epochs_done)
        for images, labels in self.batches:
            out, loss = model.output_and_loss(to_pixels(images, self.augment), labels)
            losses.update(loss.detach(), weight=len(labels))
            hits.update(out.detach(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        self.last = {"loss": losses.compute().item(), "acc": hits.compute().item()}  # (syncs the device)
        losses.reset()
        hits.reset()
        self.epochs_done += 1
        return time.perf_counter() - start


def plain_epochs(cfg, epochs: int, snapshots: bool = False, device="cpu"):
    """PlainLoop for ``epochs`` epochs: seconds per epoch (+ weights after each)."""
    loop = PlainLoop(cfg, epochs, device)
    times, states = [], []
    for _ in range(epochs):
        times.append(loop.epoch())
        if snapshots:
            states.append({k: v.detach().clone() for k, v in loop.model.state_dict().items()})
    return times, states, loop.model


class TorchvisionLoop:
    """The tutorials' recipe: torchvision's MNIST dataset (PIL images, ToTensor, Normalize)
    through a DataLoader, the same network and optimiser, a plain loop. The training
    digits are written as torchvision's raw files in a temporary directory (``close()``)."""

    def __init__(self, cfg, device="cpu"):

        torch.manual_seed(cfg.seed)
        dm, self.model = _build(cfg, device)
        self.device = device
        self._root = tempfile.TemporaryDirectory()
        raw = Path(self._root.name) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for split, stem in (("train", "train"), ("test", "t10k")):
            x, y = (
                (dm.splits["train"].images, dm.splits["train"].labels)
                if split == "train"
                else load_split("sample", "test")
            )
            write_idx(raw / f"{stem}-images-idx3-ubyte", x)
            write_idx(raw / f"{stem}-labels-idx1-ubyte", y)
        mean, std = dm.pixel_stats
        dataset = datasets.MNIST(
            self._root.name,
            train=True,
            download=False,
            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))]),
        )
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=dm.batch_size, shuffle=True)
        self.opt = self.model.optimizer_factory(params=self.model.parameters())

    def epoch(self, train: bool = True) -> float:
        """Seconds for one epoch; ``train=False``: only draw the batches (the data path alone)."""
        model, opt, hp = self.model, self.opt, self.model.hparams
        model.train()
        _sync(self.device)
        start = time.perf_counter()
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if train:
                loss = model.net(x.flatten(1), y, hp.loss, hp.label_smoothing)[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _sync(self.device)
        return time.perf_counter() - start

    def close(self) -> None:
        self._root.cleanup()


def torchvision_epochs(cfg, epochs: int) -> list[float]:
    loop = TorchvisionLoop(cfg)
    try:
        return [loop.epoch() for _ in range(epochs)]
    finally:
        loop.close()


def loader_epoch(batches: DeviceBatches, epoch: int, device="cpu") -> float:
    """Seconds for handprop's loader to hand over one epoch of ready float batches,
    without augmentation (the tutorials' recipe has none): the data path alone."""
    batches.set_epoch(epoch)
    _sync(device)
    start = time.perf_counter()
    for images, _ in batches:
        to_pixels(images)
    _sync(device)
    return time.perf_counter() - start


def epoch_speed(epochs: int = 9, overrides=(), device="cpu") -> dict:
    """One epoch of the default recipe three ways, taking turns epoch by epoch: Lightning's
    epoch, then (in alternating order) the plain loop's and the torchvision recipe's. The
    first epoch of each warms up; the medians of the rest are compared. Then the data path
    alone: handprop's loader vs torchvision's DataLoader, each drawing one epoch of batches."""
    cfg = bare_config(overrides)
    plain, tv = PlainLoop(cfg, epochs, device), TorchvisionLoop(cfg, device)
    # the loader on its own: the plain loop's tensors (already on the device), its own order
    loader = DeviceBatches(
        plain.batches.images, plain.batches.labels, plain.batches.batch_size, shuffle=True, seed=cfg.seed
    )
    plain_s, tv_s, loader_s, tv_loader_s = [], [], [], []

    def between(epoch: int) -> None:
        for run in (plain, tv) if epoch % 2 == 0 else (tv, plain):
            (plain_s if run is plain else tv_s).append(run.epoch())
        for _ in range(3):
            loader_s.append(loader_epoch(loader, len(loader_s), device))
            tv_loader_s.append(tv.epoch(train=False))

    try:
        lightning_s = lightning_epochs(cfg, epochs, between=between, device=device)[0]
    finally:
        tv.close()
    med = {
        k: statistics.median(v[1:])
        for k, v in {
            "lightning": lightning_s,
            "plain": plain_s,
            "tv": tv_s,
            "loader": loader_s,
            "tv_loader": tv_loader_s,
        }.items()
    }
    return {
        "recipe": "default (4,000 sample digits, batch 128, augmentation on)",
        "device": str(device),
        "epochs": epochs,
        "handprop_epoch_s": med["lightning"],
        "handprop_samples_per_s": len(plain.batches.labels) / med["lightning"],
        "plain_loop_epoch_s": med["plain"],
        "torchvision_dataloader_epoch_s": med["tv"],
        "speedup_vs_torchvision": med["tv"] / med["lightning"],
        "overhead_vs_plain_loop": med["lightning"] / med["plain"] - 1,
        "handprop_loader_epoch_s": med["loader"],
        "torchvision_loader_epoch_s": med["tv_loader"],
        "loader_speedup_vs_torchvision": med["tv_loader"] / med["loader"],
        "raw_epoch_s": {"handprop": lightning_s, "plain_loop": plain_s, "torchvision": tv_s},
    }


# --------------------------------------------------------------------------- fashion


def _accuracy_curve(model, states, images, labels) -> list[float]:
    model.eval()
    images, labels = images.to(model.device), labels.to(model.device)
    accs = []
    with torch.no_grad():
        for state in states:
            model.load_state_dict(state)
            correct = sum(
                (model(to_pixels(x)).argmax(1) == y).sum().item()
                for x, y in zip(images.split(2000), labels.split(2000))
            )
            accs.append(correct / len(labels))
    return accs


def fashion_time_to_accuracy(
    data_dir: str,
    experiment: str = "fashion_mlp",
    target: float = 0.89,
    budget_s: float = 180.0,
    device="cpu",
    overrides=(),
) -> dict:
    cfg = bare_config([f"experiment={experiment}", f"data.data_dir={data_dir}", *overrides])
    test_x, test_y = load_split("fashion_mnist", "test", data_dir)
    out = {"recipe": f"experiment={experiment}", "device": str(device), "target": target, "budget_s": budget_s}
    for name, run in (("handprop", lightning_epochs), ("plain_loop", plain_epochs)):
        times, states, model = run(cfg, cfg.trainer.max_epochs, snapshots=True, device=device)
        accs = _accuracy_curve(model, states, test_x, test_y)
        elapsed = [sum(times[: i + 1]) for i in range(len(times))]
        reached = next((t for t, a in zip(elapsed, accs) if a >= target), None)
        within = [a for t, a in zip(elapsed, accs) if t <= budget_s]
        out[name] = {
            "epochs": len(times),
            "train_s": elapsed[-1],
            "final_test_acc": accs[-1],
            "seconds_to_target": reached,
            "test_acc_within_budget": within[-1] if within else None,
            "curve": [(round(t, 2), round(a, 4)) for t, a in zip(elapsed, accs)],
        }
    return out


# --------------------------------------------------------------------------- pictures

PICTURE_CALLBACKS = {"training_scalars": TrainingScalars, "pictures": TensorBoardPictures}
_INSIDE: dict[str, float] = {}  # "Class.hook" -> seconds spent inside it
# TensorBoardPictures' work by picture (called from its hooks, so inside their seconds):
# the lesson's two pictures -- one digit's backpropagation, the descent and the path it
# records -- and the others
PICTURE_PARTS = {
    "_draw_backprop": "backprop",
    "_draw_descent": "descent",
    "_record_path": "descent",
    "_draw_validation": "weights, confusion, mistakes",
    "_write_histograms": "histograms",
    "_save": "PNG files",
}
LESSON = ("backprop", "descent")


def _timed(callback_class: type) -> type:
    """A subclass of a callback whose every hook (those the class defines: Lightning calls
    hooks by name) adds the seconds it takes to ``_INSIDE``; so do the pictures'
    methods in PICTURE_PARTS (under "Class.method")."""

    def timed(name: str):
        def hook(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return getattr(super(timed_class, self), name)(*args, **kwargs)
            finally:
                where = f"{callback_class.__name__}.{name}"
                _INSIDE[where] = _INSIDE.get(where, 0.0) + time.perf_counter() - start

        return hook

    hooks = [
        n
        for n, v in vars(callback_class).items()
        if (n.startswith(("on_", "setup")) or n in PICTURE_PARTS) and callable(v)
    ]
    timed_class = type(f"Timed{callback_class.__name__}", (callback_class,), {n: timed(n) for n in hooks})
    return timed_class


TIMED = {key: _timed(cls) for key, cls in PICTURE_CALLBACKS.items()}
for _cls in TIMED.values():
    globals()[_cls.__name__] = _cls  # where Hydra's _target_ finds them


def pictures_cost(overrides=(), rounds: int = 2) -> dict:
    """What the TensorBoard pictures and per-layer scalars cost a default ``python train.py``:
    the run's wall time (fit and test) without and with the two callbacks, taking turns
    ``rounds`` times (medians compared), and the seconds spent inside their hooks in the
    runs that have them (the same callbacks, subclassed to time their hooks), the pictures'
    (``TensorBoardPictures``) apart from the scalars'; and within the pictures' hooks, each
    picture's own seconds (``by_picture_s``, PICTURE_PARTS), the lesson's two -- one digit's
    backprop and the descent -- summed as ``lesson_inside_s``. The first figure a process
    draws also loads matplotlib's fonts: a run pays that once, in its first picture."""
    with_timed = [f"callbacks.{key}._target_={__name__}.{cls.__name__}" for key, cls in TIMED.items()]
    without = [f"callbacks.{key}=null" for key in PICTURE_CALLBACKS]
    out = {"recipe": "default python train.py" + (" " + " ".join(overrides) if overrides else ""), "rounds": rounds}
    walls: dict[str, list[float]] = {"without": [], "with": []}
    fits: dict[str, list[float]] = {"without": [], "with": []}
    inside: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, extra in (("without", without), ("with", with_timed)):
            with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as run_dir:
                cfg = compose(
                    [*overrides, *extra, "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"], run_dir
                )
                _INSIDE.clear()
                start = time.perf_counter()
                metrics = train(cfg)
                walls[name].append(time.perf_counter() - start)
                fits[name].append(metrics["time/fit_s"])
            if name == "with":
                for hook, seconds in _INSIDE.items():
                    inside.setdefault(hook, []).append(seconds)
    for name in walls:
        out[f"{name}_s"] = statistics.median(walls[name])
        out[f"{name}_fit_s"] = statistics.median(fits[name])
        out[f"{name}_runs_s"] = walls[name]
    per_hook = {hook: statistics.fmean(v) for hook, v in inside.items()}
    parts = {k: v for k, v in per_hook.items() if k.split(".")[1] in PICTURE_PARTS}
    hooks = {k: v for k, v in per_hook.items() if k not in parts}
    out["inside_callbacks_s"] = sum(hooks.values())
    out["by_hook_s"] = dict(sorted(hooks.items(), key=lambda kv: -kv[1]))
    by_picture: dict[str, float] = {}
    for key, seconds in parts.items():
        name = PICTURE_PARTS[key.split(".")[1]]
        by_picture[name] = by_picture.get(name, 0.0) + seconds
    out["by_picture_s"] = dict(sorted(by_picture.items(), key=lambda kv: -kv[1]))
    out["pictures_inside_s"] = sum(v for k, v in hooks.items() if k.startswith("TensorBoardPictures."))
    out["lesson_inside_s"] = sum(by_picture.get(name, 0.0) for name in LESSON)
    rest = out["with_s"] - out["inside_callbacks_s"]  # the run itself, less both callbacks' hooks
    out["wall_overhead"] = out["with_s"] / out["without_s"] - 1
    out["inside_share"] = out["inside_callbacks_s"] / rest
    out["pictures_share"] = out["pictures_inside_s"] / rest
    out["lesson_share"] = out["lesson_inside_s"] / rest
    return out


LESSON_OFF = ("callbacks.pictures.backprop=false", "callbacks.pictures.descent=false")


def lesson_cost(overrides=(), rounds: int = 6) -> dict:
    """What the lesson's two pictures (one digit's backprop, the descent) add to a default
    ``python train.py``: the command as a user runs it, a fresh process each time, with
    them off and on (the other pictures drawn in both), in pairs whose order alternates.
    The figure is the median of the pairs' differences: on a shared machine a run's speed
    drifts by several percent within minutes, more than the pictures cost, and a pair run
    back to back shares its drift. (Runs repeated inside one process would share state no
    user's run has: the allocator's and matplotlib's caches, the garbage collector's
    generations.) One thread, on one core where the machine has several: a second thread
    of the same run spins on a core that is busy elsewhere, and multiplies the noise."""
    threads = 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else set()
    pinned = len(cores) > 1  # (Linux: each started process inherits this thread's cores)
    walls: dict[str, list[float]] = {"off": [], "on": []}
    if pinned:
        os.sched_setaffinity(0, {max(cores)})
    try:
        for turn in range(rounds):
            for name in ("off", "on") if turn % 2 == 0 else ("on", "off"):
                extra = LESSON_OFF if name == "off" else ()
                with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as run_dir:
                    command = [
                        sys.executable,
                        "train.py",
                        *overrides,
                        *extra,
                        "callbacks.progress_bar=null",
                        "trainer.enable_progress_bar=false",
                        f"hydra.run.dir={run_dir}",
                    ]
                    start = time.perf_counter()
                    run = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    walls[name].append(time.perf_counter() - start)
                if run.returncode != 0:
                    raise RuntimeError(f"{' '.join(command)} failed ({run.returncode}): {run.stderr[-3000:]}")
    finally:
        if pinned:
            os.sched_setaffinity(0, cores)
    differences = [on - off for on, off in zip(walls["on"], walls["off"])]
    added, base = statistics.median(differences), statistics.median(walls["off"])
    return {
        "recipe": "python train.py" + (" " + " ".join(overrides) if overrides else ""),
        "rounds": rounds,
        "threads": threads,
        "off_runs_s": walls["off"],
        "on_runs_s": walls["on"],
        "differences_s": differences,
        "added_s": added,
        "off_s": base,
        "added_share": added / base,
    }


# --------------------------------------------------------------------------- cli

ROOT = Path(__file__).resolve().parents[1]
HELP_BUDGET_S = 2.0  # `python train.py --help` answers within this (torch and Lightning load only for a run)
HEAVY = ("torch", "lightning", "torchvision", "matplotlib")  # what --help should not import


def help_speed(repeats: int = 9, script: str = "train.py") -> dict:
    """Wall seconds of ``python <script> --help``, each a fresh subprocess as a user starts
    it (interpreter start, imports, Hydra composing the config, the text printed): the
    median of ``repeats`` after one unmeasured run (the OS's file cache, .pyc files).
    One more run under ``-X importtime`` names the heavy packages it imported, if any."""
    command = [sys.executable, script, "--help"]
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if i:
            times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"python {script} --help failed (exit status {proc.returncode}):\n{proc.stderr[-2000:]}")
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if line.startswith("import time")
    }
    median = statistics.median(times)
    return {
        "command": f"python {script} --help",
        "repeats": repeats,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "budget_s": HELP_BUDGET_S,
        "under_budget": median < HELP_BUDGET_S,
        "heavy_imports": [name for name in HEAVY if name in imported],
        "help_lines": len(proc.stdout.splitlines()),
    }


_DENORMAL_CHILD = """
import statistics, sys, time
import torch
import handprop.functional  # sets the flush, before any thread pool starts
if sys.argv[1] == "off":
    torch.set_flush_denormal(False)  # still before the pool: every thread computes with denormals
size, steps, dead = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.manual_seed(0)
w = torch.nn.Parameter(torch.randn(size))
optimizer = torch.optim.AdamW([w], lr=1e-3)
live = (torch.rand(size) >= dead).float()
w.grad = torch.randn(size)
optimizer.step()
# where the gradient has become 0, Adam's running mean decays towards 0 by beta1 a step:
# after some 850 steps it is a denormal
optimizer.state[w]["exp_avg"][live == 0] = 1e-40
times = []
for _ in range(steps):
    w.grad = torch.randn(size) * live
    start = time.perf_counter()
    optimizer.step()
    times.append(time.perf_counter() - start)
print(statistics.median(times), torch.get_num_threads())
"""


def denormal_speed(size: int = 1 << 20, steps: int = 30, dead: float = 0.7, repeats: int = 3) -> dict:
    """An AdamW step on ``size`` weights, ``dead`` of them with a gradient that has become 0
    and a running mean that has decayed into the denormals, with handprop's flush of
    denormals (every CPU thread) and without it: fresh processes taking turns, since the
    flag must be set before PyTorch starts its threads."""
    medians: dict[str, list[float]] = {"on": [], "off": []}
    threads = None
    for _ in range(repeats):
        for mode in medians:
            proc = subprocess.run(
                [sys.executable, "-c", _DENORMAL_CHILD, mode, str(size), str(steps), str(dead)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            seconds, threads = proc.stdout.split()
            medians[mode].append(float(seconds))
    on, off = statistics.median(medians["on"]), statistics.median(medians["off"])
    return {
        "size": size,
        "dead": dead,
        "threads": int(threads),
        "step_ms_flushed": 1e3 * on,
        "step_ms_denormal": 1e3 * off,
        "slowdown": off / on,
    }


def _report_denormals(d: dict) -> str:
    return (
        f"\nAdamW step on {d['size']:,} weights, {100 * d['dead']:.0f}% of their running means denormal, "
        f"{d['threads']} CPU threads: {d['step_ms_flushed']:.2f} ms with handprop's flush to 0, "
        f"{d['step_ms_denormal']:.2f} ms without ({d['slowdown']:.1f}x)"
    )


# --quick: each section's own code at toy sizes (make test runs it, so that a broken section fails CI)
_SHORT_RUN = (
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.val_size=100",
)
QUICK = {
    "sizes": (SIZES[0],),
    "audit": {"batch": 16, "number": 2},
    "gemm": {"batch": 16, "hidden": (32, 32), "square": 64},
    "epoch": {"epochs": 2, "overrides": ("trainer.limit_train_batches=3",)},
    "pictures": {"overrides": _SHORT_RUN, "rounds": 1},
    "lesson": {"overrides": _SHORT_RUN, "rounds": 1},
    "fashion": {"overrides": ("trainer.max_epochs=1", "data.val_size=100"), "budget_s": 60.0},
    "default_recipe": ("model.hidden=[16]",),  # the per-digit numpy loop at the default size takes seconds
    "denormals": {"size": 1 << 12, "steps": 2, "repeats": 1},
}


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = " | ".join(title for title, _, _ in columns)
    lines = [head, " | ".join("---" for _ in columns)]
    for row in rows:
        lines.append(" | ".join(format(row[key], fmt) for _, key, fmt in columns))
    return "\n".join(lines)


def _report_backward(rows: list[dict], batch: int, threads: int) -> str:
    return (
        f"\nManual backward vs PyTorch autograd: one training step, batch {batch}, CPU threads {threads}\n"
        "manual: loss.backward() through MLPFunction, as every training step runs it\n"
        "speed ratio = autograd time / manual time (>= 1: ours as fast or faster); "
        "memory ratio = manual saved bytes / autograd saved bytes (<= 1: ours keeps no more)\n\n"
        + _table(
            rows,
            [
                ("network", "network", "<18"),
                ("recipe", "recipe", "<8"),
                ("manual ms", "step_ms_manual", ">9.3f"),
                ("autograd ms", "step_ms_autograd", ">11.3f"),
                ("speed ratio", "speed_ratio", ">11.3f"),
                ("saved bytes manual", "saved_bytes_manual", ">18,"),
                ("saved bytes autograd", "saved_bytes_autograd", ">20,"),
                ("memory ratio", "memory_ratio", ">12.3f"),
            ],
        )
    )


def _report_audit(a: dict) -> str:
    return (
        f"\nGradient audit every {a['every_n_steps']} steps ({a['network']}): one audit {a['audit_ms']:.2f} ms, "
        f"a step {a['step_ms']:.2f} ms -> +{a['overhead_pct']:.2f}% of training time"
    )


def _report_gemm(g: dict) -> str:
    return (
        f"\nLarge-MLP step ({g['network']}, batch {g['batch']}, float32): {g['step_ms']:.1f} ms = "
        f"{g['step_gflops']:.1f} GFLOP/s; a {g['gemm_size']}x{g['gemm_size']} matrix product runs at "
        f"{g['gemm_gflops']:.1f} GFLOP/s -> {100 * g['fraction_of_gemm']:.0f}% of the machine's GEMM rate"
    )


def _report_epoch(e: dict) -> str:
    return (
        f"\nOne epoch of the default recipe on {e['device']} (median of {e['epochs'] - 1}): handprop under "
        f"Lightning {e['handprop_epoch_s']:.3f} s ({e['handprop_samples_per_s']:,.0f} samples/s), "
        f"plain PyTorch loop on the same tensors {e['plain_loop_epoch_s']:.3f} s "
        f"(framework overhead {100 * e['overhead_vs_plain_loop']:+.1f}%), torchvision MNIST + DataLoader "
        f"{e['torchvision_dataloader_epoch_s']:.3f} s ({e['speedup_vs_torchvision']:.1f}x slower than handprop)\n"
        f"The data path alone, one epoch of ready batches (no augmentation, no training): handprop's "
        f"loader {1e3 * e['handprop_loader_epoch_s']:.1f} ms, torchvision MNIST + DataLoader "
        f"{1e3 * e['torchvision_loader_epoch_s']:.1f} ms ({e['loader_speedup_vs_torchvision']:.0f}x)"
    )


def _report_pictures(p: dict) -> str:
    return (
        f"\nTensorBoard pictures and scalars, a default python train.py (median of {p['rounds']} turns each): "
        f"{p['with_s']:.1f} s with them, {p['without_s']:.1f} s without ({100 * p['wall_overhead']:+.1f}%); "
        f"{p['inside_callbacks_s']:.2f} s inside their hooks = {100 * p['inside_share']:.1f}% of the rest of the run, "
        f"the pictures' {p['pictures_inside_s']:.2f} s = {100 * p['pictures_share']:.1f}% ("
        + ", ".join(f"{k} {v:.2f} s" for k, v in list(p["by_hook_s"].items())[:6])
        + ")\nBy picture: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in p["by_picture_s"].items())
        + f"; the lesson's two ({' and '.join(LESSON)}) {p['lesson_inside_s']:.2f} s = "
        f"{100 * p['lesson_share']:.1f}% of the rest of the run"
    )


def _report_lesson(p: dict) -> str:
    turns = ", ".join(f"{d:+.2f}" for d in p["differences_s"])
    return (
        f"\nThe lesson's two pictures (backprop and descent) off and on, {p['recipe']} as a fresh process, "
        f"{p['rounds']} pairs in alternating order, {p['threads']} thread: {p['added_s']:+.2f} s "
        f"(median of the pairs: {turns} s) on {p['off_s']:.1f} s = {100 * p['added_share']:+.1f}% of the run"
    )


def _fashion(args, quick: dict) -> dict | None:
    """Both Fashion-MNIST recipes to their target accuracy; --quick: one, on 600 sample
    digits written as Fashion-MNIST's files; None when the dataset is not installed."""
    if args.quick:
        with tempfile.TemporaryDirectory() as fake:
            for split, stem in (("train", "train"), ("test", "t10k")):
                x, y = load_split("sample", split)
                write_idx(Path(fake) / f"{stem}-images-idx3-ubyte.gz", x[:600])
                write_idx(Path(fake) / f"{stem}-labels-idx1-ubyte.gz", y[:600])
            return {"fashion_fast": fashion_time_to_accuracy(fake, "fashion_fast", **quick["fashion"])}
    root = Path(args.fashion_dir)
    if not (root / "t10k-images-idx3-ubyte.gz").exists() and not (root / "FashionMNIST" / "raw").is_dir():
        print(f"\nFashion-MNIST: not found in {root} (apt-get install dataset-fashion-mnist, or --fashion-dir)")
        return None
    return {e: fashion_time_to_accuracy(root, e, device=args.device) for e in ("fashion_fast", "fashion_mlp")}


def _batch10(args) -> dict:
    """Nielsen's chapter-1 epoch four ways: on full MNIST when it is there, else on the sample."""
    full = not args.quick and (Path(args.mnist_dir) / "MNIST" / "raw").is_dir()
    overrides = ("data=mnist", f"data.data_dir={Path(args.mnist_dir).resolve()}") if full else ()
    return textbook.batch10_speed(overrides, repeats=1 if args.quick else 5, **_marginal(args))


def _marginal(args) -> dict:
    """--quick: one fit of one epoch (the code runs; nothing is measured)."""
    return {"long": 1, "short": None} if args.quick else {}


def _step_cost(args) -> dict:
    """One step at batch 10 five ways; full MNIST when it is there (5,000 steps an epoch)."""
    full = not args.quick and (Path(args.mnist_dir) / "MNIST" / "raw").is_dir()
    overrides = ("data=mnist", f"data.data_dir={Path(args.mnist_dir).resolve()}") if full else ()
    quick = {"repeats": 1, "variants": ("handprop",)} if args.quick else {}
    return step_cost.step_cost(overrides, **quick)


def _report_fashion(results: dict | None) -> str:
    lines = []
    for f in (results or {}).values():
        lines.append(
            f"\nFashion-MNIST ({f['recipe']}), seconds of training to {100 * f['target']:.0f}% test accuracy / "
            "final accuracy / training time:"
        )
        for name in ("handprop", "plain_loop"):
            r = f[name]
            to = f"{r['seconds_to_target']:.1f} s" if r["seconds_to_target"] is not None else "not reached"
            lines.append(
                f"  {name:<11} {to:>12}  {100 * r['final_test_acc']:.2f}%  {r['train_s']:.1f} s ({r['epochs']} epochs)"
            )
    return "\n".join(lines) if lines else "\nFashion-MNIST: skipped"


def _report_cli(c: dict) -> str:
    verdict = "under" if c["under_budget"] else "OVER"
    heavy = ", ".join(c["heavy_imports"]) or "none of " + ", ".join(HEAVY)
    return (
        f"\n{c['command']}: {c['median_s']:.2f} s (median of {c['repeats']}, {c['min_s']:.2f}-{c['max_s']:.2f} s), "
        f"{verdict} the {c['budget_s']:.0f} s budget; {c['help_lines']} lines; imported {heavy}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench/bench.json", help="where to write the JSON results")
    parser.add_argument("--repeats", type=int, default=9, help="repeats per measurement (median taken)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--only", default="batch10,backward,gemm,epoch,pictures,fashion,cli,denormals", help="comma-separated sections"
    )
    parser.add_argument("--device", default="cpu", help="where the epoch and fashion sections train (cpu, cuda)")
    parser.add_argument(
        "--fashion-dir",
        default="/usr/share/datasets/fashion-mnist",
        help="Fashion-MNIST's four IDX files (apt-get install dataset-fashion-mnist)",
    )
    parser.add_argument(
        "--mnist-dir",
        default="../shared/data/mnist",
        help="full MNIST in torchvision's layout, for the batch-10 section (else the embedded sample)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every section at toy sizes, one repeat, in well under two minutes: that the benchmark "
        "runs (make test does), not what it measures",
    )
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    if args.quick:
        args.repeats, args.batch = 1, 16
    sections = args.only.split(",")
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # (result key, what measures it, what reports it), in the order asked for
    steps = {
        "backward": [
            (
                "backward",
                lambda: [
                    backward_vs_autograd(h, r, args.batch, args.repeats)
                    for r in RECIPES
                    for h in quick.get("sizes", SIZES)
                ],
                lambda rows: _report_backward(rows, args.batch, results["threads"]),
            ),
            ("audit", lambda: audit_overhead(repeats=args.repeats, **quick.get("audit", {})), _report_audit),
        ],
        "gemm": [("gemm", lambda: gemm_fraction(repeats=args.repeats, **quick.get("gemm", {})), _report_gemm)],
        "epoch": [("epoch", lambda: epoch_speed(device=args.device, **quick.get("epoch", {})), _report_epoch)],
        "pictures": [
            ("pictures", lambda: pictures_cost(**quick.get("pictures", {})), _report_pictures),
            ("lesson", lambda: lesson_cost(**quick.get("lesson", {})), _report_lesson),
        ],
        "fashion": [("fashion", lambda: _fashion(args, quick), _report_fashion)],
        "cli": [("cli", lambda: help_speed(repeats=args.repeats), _report_cli)],
        "denormals": [("denormals", lambda: denormal_speed(**quick.get("denormals", {})), _report_denormals)],
        "batch10": [
            ("batch10", lambda: _batch10(args), textbook.report),
            ("step_cost", lambda: _step_cost(args), step_cost.report),
            (
                "default_recipe",
                lambda: textbook.default_recipe_speed(quick.get("default_recipe", ()), repeats=1 if args.quick else 5),
                textbook.report,
            ),
        ],
    }
    for section in sections:
        for key, measure, report in steps[section]:
            results[key] = measure()
            print(report(results[key]))
            out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
