"""Section ``epoch``: one training epoch of the default recipe three ways, taking turns epoch
by epoch: handprop under Lightning with its device-resident loader; PlainLoop, the same
model, optimiser, schedule, augmentation and bookkeeping in a plain PyTorch loop over the
same tensors (what the framework costs); and the classic torchvision MNIST + DataLoader
recipe. Then the data path alone, handprop's loader against torchvision's.

lightning_epochs and PlainLoop also train the Fashion-MNIST recipes (fashion.py)."""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import timing
import torch
from torchvision import datasets, transforms

from handprop.build import build_data_and_model
from handprop.compose import bare_config
from handprop.data import DeviceBatches, load_split, to_pixels, write_idx
from handprop.gate import schedule_length


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
        timing.sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        timing.sync(pl_module.device)
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
        timing.sync(self.device)
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
        timing.sync(self.device)
        start = time.perf_counter()
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if train:
                loss = model.net(x.flatten(1), y, hp.loss, hp.label_smoothing)[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        timing.sync(self.device)
        return time.perf_counter() - start

    def close(self) -> None:
        self._root.cleanup()


def loader_epoch(batches: DeviceBatches, epoch: int, device="cpu") -> float:
    """Seconds for handprop's loader to hand over one epoch of ready float batches,
    without augmentation (the tutorials' recipe has none): the data path alone."""
    batches.set_epoch(epoch)
    timing.sync(device)
    start = time.perf_counter()
    for images, _ in batches:
        to_pixels(images)
    timing.sync(device)
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
    seconds: dict[str, list[float]] = {"plain": [], "tv": [], "loader": [], "tv_loader": []}
    loader_epochs = itertools.count()

    def between(epoch: int) -> None:  # after each of Lightning's epochs, its clock stopped
        for name, s in timing.take_turns({"plain": plain.epoch, "tv": tv.epoch}, 1, first=epoch).items():
            seconds[name] += s
        data_path = {
            "loader": lambda: loader_epoch(loader, next(loader_epochs), device),
            "tv_loader": lambda: tv.epoch(train=False),
        }
        for name, s in timing.take_turns(data_path, 3).items():
            seconds[name] += s

    try:
        with timing.threads() as threads:
            seconds["lightning"] = lightning_epochs(cfg, epochs, between=between, device=device)[0]
    finally:
        tv.close()
    med = timing.medians(seconds, skip=1)
    return {
        "recipe": "the default recipe (4,000 sample digits, batch 128, augmentation on)",
        "device": str(device),
        "threads": threads,
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
        "raw_epoch_s": {"handprop": seconds["lightning"], "plain_loop": seconds["plain"], "torchvision": seconds["tv"]},
    }


def measure(args) -> dict:
    """--quick: two epochs of three Lightning batches."""
    quick = timing.toy(args, epochs=2, overrides=("trainer.limit_train_batches=3",))
    return epoch_speed(device=args.device, **quick)


def report(e: dict) -> str:
    rows = [
        ("handprop under Lightning", e["handprop_epoch_s"]),
        ("plain PyTorch loop, same tensors and work", e["plain_loop_epoch_s"]),
        ("torchvision MNIST + DataLoader", e["torchvision_dataloader_epoch_s"]),
    ]
    rows = [{"run": run, "s": s, "vs": s / e["handprop_epoch_s"]} for run, s in rows]
    return (
        f"\nOne epoch of {e['recipe']} on {e['device']}, {timing.plural(e['threads'], 'CPU thread')}, "
        f"the three taking turns (median of {e['epochs'] - 1}):\n"
        + timing.table(rows, [("run", "run", "<42"), ("seconds", "s", ">8.3f"), ("vs handprop", "vs", ">10.2f")])
        + f"\nhandprop: {e['handprop_samples_per_s']:,.0f} samples/s, framework overhead "
        f"{100 * e['overhead_vs_plain_loop']:+.1f}% against the plain loop, {e['speedup_vs_torchvision']:.1f}x "
        f"faster than torchvision's recipe\nThe data path alone, one epoch of ready batches (no augmentation, "
        f"no training): handprop's loader {1e3 * e['handprop_loader_epoch_s']:.1f} ms, torchvision MNIST + "
        f"DataLoader {1e3 * e['torchvision_loader_epoch_s']:.1f} ms ({e['loader_speedup_vs_torchvision']:.0f}x)"
    )
