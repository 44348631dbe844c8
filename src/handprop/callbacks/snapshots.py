"""What TensorBoard's Backprop tab reads, written into the run directory as training goes.

    <run>/backprop/epoch0000.pt   the untrained network (weights only), before the first step
    <run>/backprop/epoch0001.pt   after the first epoch, ... to the last
    <run>/backprop/digits.pt      validation digits the tab offers, one fixed training mini-batch

A snapshot is ``{"state_dict", "hyper_parameters", "epoch", "step", "val_acc"}``: plain
tensors and data, which ``checkpoint.read_checkpoint`` loads with ``weights_only=True``
and checks like any checkpoint. Every epoch is kept while the snapshots total under
``budget_mb``; beyond, they are thinned evenly: the epochs kept are the multiples of a
stride that doubles each time the budget is reached, plus the latest. The digits are
copied so that the tab reads nothing outside the run directory (a full-MNIST run's data
directory need not be reachable from TensorBoard).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from ..board.runs import snapshot_epochs, snapshot_name
from ..files import atomic_write, atomic_write_text


def thinned(epochs: list[int], budget: int) -> list[int]:
    """The epochs to keep of ``epochs`` (0, 1, ... in order; the last one the newest), at
    most ``budget`` (>= 2) of them: the multiples of the smallest power-of-two stride that
    fits, and the newest."""
    stride = 1
    while True:
        kept = [e for e in epochs[:-1] if e % stride == 0] + epochs[-1:]
        if len(kept) <= budget:
            return kept
        stride *= 2


def _save(obj, path: Path) -> None:
    """Written whole or not at all (``files.atomic_write``): a reader never sees half a
    file, and a full disk is one line naming it."""
    atomic_write(path, lambda file: torch.save(obj, file), durable=False)


@torch.no_grad()
def accuracy(model, images, labels, batch: int = 2000) -> float:
    """The share of ``images`` (uint8) the network reads right, evaluated as in validation."""
    was_training = model.training
    model.eval()
    right = 0
    for i in range(0, len(labels), batch):
        x = images[i : i + batch].to(model.device, torch.float32) / 255
        right += int((model(x).argmax(1).cpu() == labels[i : i + batch].cpu()).sum())
    model.train(was_training)
    return right / max(len(labels), 1)


def write_digits(
    directory: Path, val: tuple, train: tuple, batch_size: int, lr: float | None, most: int = 1000
) -> None:
    """digits.pt: up to ``most`` of the validation digits (images uint8, labels), in their
    order, and one fixed training mini-batch of ``batch_size``, both drawn with seed 0; the
    run's learning rate, the tab's default step size."""
    generator = torch.Generator().manual_seed(0)
    kept = torch.randperm(len(val[1]), generator=generator)[:most].sort().values
    batch = torch.randperm(len(train[1]), generator=generator)[:batch_size]
    digits = {
        "val_images": val[0][kept].reshape(-1, 28, 28).to(torch.uint8).clone(),
        "val_labels": val[1][kept].long().clone(),
        "batch_images": train[0][batch].reshape(-1, 28, 28).to(torch.uint8).clone(),
        "batch_labels": train[1][batch].long().clone(),
        "learning_rate": lr,
    }
    _save(digits, directory / "digits.pt")


def write_snapshot(
    directory: Path, model, epoch: int, step: int, val: tuple, budget_mb: float = 20.0, val_acc: float | None = None
) -> None:
    """The network's weights after ``epoch`` epochs (0: untrained) and its accuracy on the
    validation digits ``val`` (``val_acc``: as the run's validation just measured it); then
    the snapshots thinned to the budget, and index.json."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    entry = {"epoch": epoch, "step": step, "val_acc": accuracy(model, *val) if val_acc is None else val_acc}
    _save({"state_dict": state, "hyper_parameters": dict(model.hparams), **entry}, directory / snapshot_name(epoch))
    size = sum(v.numel() * v.element_size() for v in state.values()) + 4096
    epochs = snapshot_epochs(directory)
    kept = thinned(epochs, max(2, int(budget_mb * 2**20 // size)))
    for gone in sorted(set(epochs) - set(kept)):
        (directory / snapshot_name(gone)).unlink(missing_ok=True)
    _write_index(directory, model, entry, set(kept))


def _write_index(directory: Path, model, entry: dict, kept: set[int]) -> None:
    """index.json: the snapshots kept, each with its step and validation accuracy, and the
    network in words (the tab lists runs from it without loading torch)."""
    path = directory / "index.json"
    try:
        old = json.loads(path.read_text())["snapshots"]
    except (OSError, ValueError, KeyError, TypeError):
        old = []
    known = {e["epoch"]: e for e in old if isinstance(e, dict) and e.get("epoch") in kept}
    known[entry["epoch"]] = entry
    hp = model.hparams
    index = {
        "network": f"{'-'.join(map(str, model.net.sizes))}, {hp.activation} neurons, {hp.loss} cost",
        "snapshots": [known[e] for e in sorted(known)],
    }
    atomic_write_text(path, json.dumps(index, indent=1))


class BackpropSnapshots(Callback):
    """Weights-only snapshots of the network from step 0 to the end, and the digits the
    Backprop tab offers (see the module's docstring). Written by the process of global
    rank 0 only."""

    def __init__(self, dirpath: str, budget_mb: float = 20.0, max_digits: int = 1000):
        self.dirpath, self.budget_mb, self.max_digits = Path(dirpath), budget_mb, max_digits
        self._validated: tuple[int, float] | None = None  # (epoch, val/acc) of the latest whole validation

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        data = trainer.datamodule
        if not (self.dirpath / "digits.pt").exists():
            lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
            train, val = data.splits["train"], data.splits["val"]
            write_digits(
                self.dirpath,
                (val.images, val.labels),
                (train.images, train.labels),
                data.batch_size,
                lr,
                self.max_digits,
            )
        if not snapshot_epochs(self.dirpath) and trainer.global_step == 0:
            self._snapshot(trainer, pl_module, 0)

    def on_validation_end(self, trainer, pl_module) -> None:
        # (after the module's own epoch-end hook, which logs val/acc)
        # the epoch's whole validation split (not a limited or sanity-check part): its accuracy is the snapshot's
        limit = trainer.limit_val_batches
        whole = not trainer.sanity_checking and isinstance(limit, float) and limit == 1.0
        acc = trainer.callback_metrics.get("val/acc")
        self._validated = (trainer.current_epoch, float(acc)) if whole and acc is not None else None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            validated = self._validated
            acc = validated[1] if validated and validated[0] == trainer.current_epoch else None
            self._snapshot(trainer, pl_module, trainer.current_epoch + 1, acc)

    def _snapshot(self, trainer, pl_module, epoch: int, val_acc: float | None = None) -> None:
        val = trainer.datamodule.splits["val"]
        write_snapshot(
            self.dirpath, pl_module, epoch, int(trainer.global_step), (val.images, val.labels), self.budget_mb, val_acc
        )
