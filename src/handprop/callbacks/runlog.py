"""A run told in words: what trains at the start, one line per epoch, in train.log.

The lines go through Python's logging (logger ``handprop.run``): Hydra's job logging
(conf/hydra/default.yaml) sends them to train.log and to the console. While a progress
bar is drawn on a terminal the epoch lines go to train.log only;
without a terminal (a batch job, a pipe) they are the console's record of progress
(``handprop.console``).
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..console import FILE_ONLY, logging_setup, percent, quiet_lightning, rebuild_logging
from ..functional import least_cost
from ..steps import run_steps
from .progress import epoch_limit, epoch_of, on_a_terminal
from .scalars import write_scalars

log = logging.getLogger("handprop.run")


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Lightning's logged metrics as floats, the one-number ones."""
    return {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}


def draws_a_bar(trainer: L.Trainer) -> bool:
    """Whether the console shows a progress bar (one is configured and stdout is a terminal)."""
    bar = trainer.progress_bar_callback
    return bar is not None and bar.is_enabled and on_a_terminal()


class RunLog(Callback):
    """The network, data and optimiser when fitting starts; after every epoch one line:

        epoch 12/120  train loss 0.842 acc 91.35% | val loss 0.702 acc 97.40% | lr 2.9e-03 | 0.3 s, 14,500 digits/s

    (epochs counted from 1; digits/s: training digits per second of training, all processes),
    and the epoch's time and speed as scalars: ``wall/epoch_s`` (training and validation)
    and ``wall/samples_per_s``; ``val/acc_best``, the best checkpoint's val/acc so far.
    """

    def __init__(self) -> None:
        self._pending: tuple | None = None  # an epoch's timing, until its training metrics are logged
        self._logging = logging_setup()  # the run's log file and console, for spawned workers

    def __setstate__(self, state: dict) -> None:
        # trainer=ddp_spawn: a worker process receives the callbacks first thing, before
        # Lightning says anything there; it starts without the run's logging
        self.__dict__.update(state)
        rebuild_logging(self._logging)
        quiet_lightning()

    # -- the start

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            for line in describe(trainer, pl_module):
                log.info(line)

    # -- every epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._flush(trainer)
        self._start, self._samples, self._trained, self._validated = time.perf_counter(), 0, None, False

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts without an epoch start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += outputs["digits"]  # the digits of the steps taken (max_steps may cut a chunk short)
        self._trained = time.perf_counter()  # the epoch's training ends here, before validation

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._validated = not trainer.sanity_checking  # (this epoch's line says val only if it ran)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # (callbacks run before the module logs the epoch's training metrics: the line is
        # written when the next epoch starts, or when training ends)
        if not self._samples:  # (a resumed run at an epoch's very end)
            return
        samples = self._samples * trainer.world_size  # every process trains its own shard
        seconds = time.perf_counter() - self._start
        speed = samples / max(self._trained - self._start, 1e-9)
        write_scalars(
            trainer,
            {"wall/epoch_s": torch.tensor(seconds), "wall/samples_per_s": torch.tensor(speed)},
            trainer.global_step - 1,
        )
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        self._pending = (trainer.current_epoch + 1, trainer.global_step - 1, seconds, speed, lr, self._validated)

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._flush(trainer)

    def _flush(self, trainer) -> None:
        if self._pending is None or not trainer.is_global_zero:
            return
        epoch, step, seconds, speed, lr, validated = self._pending
        self._pending = None
        best = next((c for c in trainer.checkpoint_callbacks if c.monitor == "val/acc"), None)
        if validated and best is not None and best.best_model_score is not None:  # the best so far, as kept
            write_scalars(trainer, {"val/acc_best": best.best_model_score.detach().cpu()}, step)
        m = scalar_metrics(trainer.callback_metrics)
        parts = [f"epoch {epoch_of(trainer, epoch)}"]
        for stage, loss in (("train", "train/loss_epoch"), ("val", "val/loss")):
            if f"{stage}/acc" in m and (stage == "train" or validated):
                parts.append(f"{stage} loss {m[loss]:.3f} acc {percent(m[f'{stage}/acc'])}")
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        parts.append(f"{seconds:.1f} s, {speed:,.0f} digits/s")
        log.info(" | ".join(parts).replace(" | ", "  ", 1), extra=FILE_ONLY if draws_a_bar(trainer) else None)


def describe(trainer: L.Trainer, module) -> list[str]:
    """What trains, in a few lines: the layers, the cost, the data, the optimiser."""
    net, hp = module.net, module.hparams
    params = sum(p.numel() for p in net.parameters())
    backward = "the hand-written backward" if net.backward == "manual" else "PyTorch's autograd"
    lines = [f"network: {' -> '.join(map(str, net.sizes))}, {params:,} parameters, gradients by {backward}"]
    for i, layer in enumerate(net.layers, 1):
        dropout = f", then dropout {net.dropout:g}" if net.dropout and i < len(net.layers) else ""
        weights = sum(p.numel() for p in layer.parameters())
        lines.append(
            f"  layer {i}: Linear({layer.in_features} -> {layer.out_features}, {layer.activation}){dropout}"
            f"  [{weights:,}]"
        )
    lines.append(f"  cost: {describe_cost(hp.loss, hp.label_smoothing, hp.num_classes)}")
    splits = getattr(trainer.datamodule, "splits", None) or {}
    if splits:
        sizes = " / ".join(f"{len(s.labels):,} {name}" for name, s in splits.items())
        batch = getattr(trainer.datamodule, "batch_size", None)
        lines.append(f"data: {getattr(trainer.datamodule, 'dataset', '?')}, {sizes} digits, batch {batch}")
    if trainer.optimizers:
        optimizer = trainer.optimizers[0]
        group = optimizer.param_groups[0]
        settings = ", ".join(
            f"{k} {group[k]:g}" for k in ("momentum", "weight_decay", "mu") if isinstance(group.get(k), float | int)
        )
        # the rate asked for: a schedule's peak (one-cycle) or start, else the optimiser's own
        lr = group.get("max_lr", group.get("initial_lr", group["lr"]))
        settings = f"lr {lr:g}, {settings}" if settings else f"lr {lr:g}"
        schedule = ""
        if trainer.lr_scheduler_configs:
            schedule = f"; schedule {type(trainer.lr_scheduler_configs[0].scheduler).__name__}"
        steps = run_steps(trainer)
        epochs = epoch_limit(trainer)
        length = f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "no epoch limit"
        lines.append(f"optimizer: {type(optimizer).__name__} ({settings}){schedule}; {length}, {steps:,} steps")
    return lines


def describe_cost(cost: str, label_smoothing: float, classes: int) -> str:
    """The cost in words, with its floor when that is not 0 (the loss curves level off there)."""
    text = {
        "cross_entropy": "cross-entropy of the softmax",
        "quadratic": "quadratic, (1/N) Σ ½‖a - y‖²",
        "quadratic_pm1": "quadratic against ±1 targets, (1/N) Σ ½‖a - y‖², y = 2·onehot - 1",
    }.get(cost, cost.replace("_", " "))
    floor = least_cost(cost, label_smoothing, classes)
    if floor:
        text += f", label smoothing {label_smoothing:g}: never below {floor:.3f} (the smoothed target is not one-hot)"
    return text
