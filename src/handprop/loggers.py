"""Where a run's scalars go: TensorBoard's event files, and metrics.csv beside them.

TensorBoard's landing page (Time Series) sorts its sections by the first part of each
tag and opens only the first two, so the tags are named to put the curves a run is read
by first and the diagnostics after them:

    train/      loss_step, loss_epoch, acc, lr          (open)
    val/        loss, acc, acc_best                      (open)
    vs_autograd/max_rel_err/layer<i>                     the live gradient audit
    visuals/    the pictures (handprop.callbacks.TensorBoardPictures)
    wall/       epoch_s, samples_per_s
    weights/    grad_norm/layer<i>, update_ratio/layer<i>, histograms layer<i>/...

The Custom Scalars tab lays the same curves out by topic (``LAYOUT``). The test result is
not a chart (one point at the end): it is in the run's summary text, metrics.json,
metrics.csv and train.log. HParams compares runs on what defines them (``HPARAMS``) and
on validation metrics, which is where a recipe is chosen.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import scalar as scalar_summary

from .files import atomic_write_text

# Custom Scalars: category -> chart -> ["Multiline", [tag regexes]]; categories in this order.
LAYOUT = {
    "learning": {
        "loss: training (epoch mean) and validation": ["Multiline", ["^train/loss_epoch$", "^val/loss$"]],
        "accuracy: training and validation": ["Multiline", ["^train/acc$", "^val/acc$"]],
        "learning rate": ["Multiline", ["^train/lr$"]],
        "loss of single steps": ["Multiline", ["^train/loss_step$"]],
    },
    "gradients": {
        "gradient norm |dC/dW, dC/db| per layer": ["Multiline", ["^weights/grad_norm/"]],
        "update ratio |dW| / |W| per step, per layer": ["Multiline", ["^weights/update_ratio/"]],
        "hand-written backward vs autograd: max relative error": ["Multiline", ["^vs_autograd/"]],
    },
    "speed": {
        "training digits per second": ["Multiline", ["^wall/samples_per_s$"]],
        "seconds per epoch (training and validation)": ["Multiline", ["^wall/epoch_s$"]],
    },
}

# HParams: the settings that define a run (name -> dotted config key), and the metrics it is compared on
HPARAMS = {  # (TensorBoard lists them by name and shows the first five: the network, its cost, its data)
    "activation": "model.activation",
    "architecture": "model.hidden",
    "batch_size": "data.batch_size",
    "cost": "model.loss",
    "data": "data.dataset",
    "distortion": "data.augment",
    "dropout": "model.dropout",
    "epochs": "trainer.max_epochs",
    "gradients": "model.backward",
    "label_smoothing": "model.label_smoothing",
    "lr": "optimizer.lr",
    "optimizer": "optimizer._target_",
    "precision": "trainer.precision",
    "scheduler": "scheduler._target_",
    "seed": "seed",
    "weight_decay": "optimizer.weight_decay",
}
HPARAMS_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss_epoch")
NOT_CHARTED = ("epoch", "trainer/", "test/")  # Lightning's epoch counter, the step counter, the one-point test result


def asked_hparams(overrides: list[str]) -> set[str]:
    """The HParams names of the settings that command-line overrides set: a key, or a group
    (``optimizer=sgd`` sets optimizer, lr and weight_decay)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    return {name for name, key in HPARAMS.items() for k in keys if key == k or key.startswith(f"{k}.")}


def run_hparams(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The settings that define a run, as TensorBoard's HParams tab takes them: short names,
    scalar values (a class as its name, a list or a group as text, none as "none")."""
    values = {}
    for name, key in HPARAMS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig | Mapping):
            value = _augment_text(OmegaConf.to_container(value, resolve=True)) if name == "distortion" else str(value)
        elif name == "architecture":  # the hidden sizes, between the input and the output
            model = cfg.model
            value = "-".join(map(str, [model.get("input_size", 784), *value, model.get("num_classes", 10)]))
        elif OmegaConf.is_list(value) or isinstance(value, list):
            value = str(list(value))
        elif key.endswith("_target_") and isinstance(value, str):
            value = value.rsplit(".", 1)[-1]
        values[name] = "none" if value is None else value
    return values


def trial_name(run_dir: str | Path) -> str:
    """A run's name in the HParams table, which shows about 15 characters: "MM-DD HH:MM:SS"
    of a run directory ``.../<date>/<time>``, with "#<job>" for a sweep's job; else the
    directory's own name."""
    parts = Path(run_dir).parts
    for i in range(len(parts) - 1):
        if re.fullmatch(r"\d{4}-\d\d-\d\d", parts[i]) and re.fullmatch(r"\d\d-\d\d-\d\d(-\d+)?", parts[i + 1]):
            name = f"{parts[i][5:]} {parts[i + 1].replace('-', ':', 2)}"
            return f"{name} #{'/'.join(parts[i + 2 :])}" if parts[i + 2 :] else name
    return Path(run_dir).name


def _augment_text(augment: dict | None) -> str:
    """data.augment as one readable value: the distortions that are on."""
    on = [f"{k}={v}" for k, v in (augment or {}).items() if v and not k.endswith("_sigma")]
    return " ".join(on) or "none"


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, with handprop's layout (the module docstring).

    It writes exactly where it is told: Lightning's expands ``$VARS`` and ``~`` in its
    directory, which Hydra and the checkpoints do not, so a run directory named with a
    ``$`` would have its event files written elsewhere."""

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        log_dir = os.path.join(self.root_dir, version)
        return os.path.join(log_dir, self.sub_dir) if isinstance(self.sub_dir, str) else log_dir

    @property
    def experiment(self):
        writer = super().experiment  # (made on first use)
        if writer is not None and not getattr(self, "layout_written", False):
            writer.add_custom_scalars(LAYOUT)
            self.layout_written = True
        return writer

    def describe(self, descriptions: dict[str, str]) -> None:
        """Words for tags (e.g. which cost a loss is), written with each tag's first point:
        TensorBoard shows them with the chart."""
        self._descriptions = dict(descriptions)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        charted = {k: v for k, v in metrics.items() if not k.startswith(NOT_CHARTED)}
        for tag in [t for t in charted if t in getattr(self, "_descriptions", {})]:
            # The description rides on a tensor-style copy of the tag's first point: TensorBoard's
            # server keeps a description only from those; readers of plain scalars (EventAccumulator's
            # Scalars, as Lightning writes them) see the plain point written below, at the same step.
            summary = scalar_summary(tag, float(charted[tag]), new_style=True)
            summary.value[0].metadata.summary_description = self._descriptions.pop(tag)
            if self.experiment.file_writer is not None:  # (None once the writer is closed: a finished fit)
                self.experiment.file_writer.add_summary(summary, step)
        if charted:
            super().log_metrics(charted, step)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        """Lightning offers the module's arguments when fitting starts; the run's record is
        written once, at its end, by ``record_run``."""

    @rank_zero_only
    def record_run(self, hparams: dict, summary: str, trial: str, asked: set[str] = frozenset()) -> None:
        """The run's HParams entry, named ``trial`` (``hparams`` against ``HPARAMS_METRICS``,
        whose values TensorBoard reads from their curves), and its summary, as text.
        ``asked``: the names of the settings given on the command line, which the table
        shows first (TensorBoard shows five at first: those that differ between runs,
        then by name)."""
        from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: PLC0415
        from torch.utils.tensorboard.summary import hparams as hparams_summary  # noqa: PLC0415

        def edit(record, change) -> None:
            plugin = record.value[0].metadata.plugin_data
            data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
            change(data)
            plugin.content = data.SerializeToString()

        def mark_asked(data) -> None:
            for info in data.experiment.hparam_infos:
                info.differs = info.name in asked

        experiment, start, end = hparams_summary(hparams, dict.fromkeys(HPARAMS_METRICS, 0.0))
        edit(experiment, mark_asked)
        edit(start, lambda data: setattr(data.session_start_info, "group_name", trial))  # its "Trial ID"
        # the run's own writer was closed when fitting and testing ended: a writer of its own,
        # its events file beside the others in the run's directory
        with SummaryWriter(self.log_dir) as writer:
            for record in (experiment, start, end):
                writer.file_writer.add_summary(record)
            writer.add_text("summary", "    " + summary.replace("\n", "\n    "))  # a code block: kept as printed

    @rank_zero_only
    def save(self) -> None:
        """The events flushed; no hparams.yaml (Lightning's holds the module's arguments,
        which .hydra/config.yaml has in full)."""
        if getattr(self, "layout_written", False):  # (a writer exists: nothing is made just to flush it)
            self.experiment.flush()


class CSVLogger(Logger):
    """Every logged scalar in ``<save_dir>/metrics.csv``: one row per logging call (a step),
    one column per scalar (the header grows with the scalars). A resumed run's rows are
    added to the file's: the run's whole history stays in one table. (Lightning's own
    CSVLogger starts the file afresh, and writes an hparams.yaml that .hydra/config.yaml
    makes redundant.)"""

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 100):
        super().__init__()
        self.directory, self.flush_logs_every_n_steps = save_dir, flush_logs_every_n_steps
        self.rows: list[dict[str, float]] = []  # not yet in the file

    name = version = ""  # one table for the run, in its directory: no sub-folders

    @property
    def save_dir(self) -> str:
        return self.directory

    log_dir = save_dir

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {k: float(v) for k, v in metrics.items() if k != "epoch"}  # (Lightning's epoch counter)
        self.rows.append({**row, "step": len(self.rows) if step is None else step})
        if step is not None and (step + 1) % self.flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self.rows:
            return
        path = Path(self.save_dir) / "metrics.csv"
        header, earlier = [], []
        if path.is_file():
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                header = list(reader.fieldnames or [])
                if not set().union(*self.rows) <= set(header):  # new columns: the file is written anew
                    earlier = list(reader)
        if header and not earlier and set().union(*self.rows) <= set(header):
            with open(path, "a", newline="") as file:
                csv.DictWriter(file, fieldnames=header).writerows(self.rows)
        else:  # the whole table, atomically: a crash leaves the old file or the new one
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=sorted(set(header).union(*self.rows)))
            writer.writeheader()
            writer.writerows(earlier + self.rows)
            atomic_write_text(path, text.getvalue())
        self.rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
