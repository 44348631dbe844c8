"""train(cfg) and evaluate(cfg): build everything from the composed config and run it.

The entry points ``train.py`` / ``eval.py`` at the top of the repository compose the
config with Hydra and call these. Every run writes into ``cfg.paths.output_dir``:
train.log, metrics.csv, checkpoints/, TensorBoard's event files and metrics.json (one flat
JSON object of final metrics).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from . import gate
from .build import build, build_all, build_data_and_model
from .callbacks import InterruptCheckpoint, ProgressBar
from .callbacks.runlog import describe_cost, scalar_metrics
from .checkpoint import FUNCTION_SETTINGS, check_same_recipe, model_from_checkpoint, read_checkpoint
from .compose import run_files
from .console import FILE_ONLY, percent, quiet_lightning, tell
from .errors import HandpropError
from .files import AtomicCheckpointIO, atomic_write_text, is_disk_full, no_space, remove_stale_temporaries
from .loggers import CSVLogger, TensorBoardLogger, asked_hparams, run_hparams, trial_name
from .rundir import checkpoint_dirs, command_line, recorded_overrides, refuse_to_overwrite
from .steps import NoProfiler

log = logging.getLogger(__name__)


@rank_zero_only
def _write_metrics(output_dir: str, metrics: dict[str, float]) -> Path:
    path = Path(output_dir) / "metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def _continue_tensorboard_run(cfg: DictConfig) -> None:
    """A run resumed into its own directory keeps writing to its TensorBoard run, even when
    the resume changes overrides (and with them the run's name), e.g. more epochs."""
    tb = (cfg.get("logger") or {}).get("tensorboard")
    if not cfg.get("ckpt_path") or tb is None:
        return
    root = Path(cfg.paths.output_dir) / str(tb.get("name") or "")
    existing = sorted({p.parent for p in root.rglob("events.out.tfevents.*")}) if root.is_dir() else []
    if len(existing) == 1:  # (the run directory itself, "", for a run that had no overrides)
        with open_dict(cfg):
            cfg.logger.tensorboard.version = "" if existing[0] == root else existing[0].relative_to(root).as_posix()


def flush_denormals() -> None:
    """Numbers closer to 0 than float32's smallest normal (1.2e-38) are denormals, and a CPU
    computes with them many times slower. Training makes them: Adam's running mean of a
    gradient that has become 0 (a dead ReLU, a weight from a pixel that is never ink)
    shrinks by beta1 every step down through the denormals, and the optimiser step slows
    epoch after epoch. Flushed to 0 they cost nothing, and no number changes by more than
    1e-38. The CPU's flag belongs to each thread, and a thread inherits it from the thread
    that starts it: set before a run's tensor work starts PyTorch's pool of CPU threads,
    it holds in all of them. A setting of the process, so the training run makes it, not
    the math package."""
    torch.set_flush_denormal(True)


def train(cfg: DictConfig, began: float | None = None) -> dict[str, float]:
    """Fit, then test with the best checkpoint, then write metrics.json. Returns the metrics.
    ``began``: when the program started (``time.perf_counter()``), for the summary's wall time."""
    began = time.perf_counter() if began is None else began
    flush_denormals()
    quiet_lightning()
    plan = gate.check(cfg)  # (before anything is written: a composed run's directory is claimed after it)
    with run_files(cfg):  # (a composed run's .hydra/ and train.log: a Hydra app's run has them already)
        return _train(cfg, plan, began)


def _train(cfg: DictConfig, plan, began: float) -> dict[str, float]:
    _announce(cfg, "train")
    with open_dict(cfg):
        cfg.model.chunk = plan.chunk  # mini-batches per Lightning batch, as the gate chose
    if rank_zero_only.rank == 0:
        log.info(plan.describe(), extra=FILE_ONLY)
        for note in plan.notes:
            log.warning(note)
    if plan.chunk > 1:  # Lightning counts its own batches (chunks) against log_every_n_steps; the steps log themselves
        warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")
    ckpt_path, init_from = cfg.get("ckpt_path"), cfg.get("init_from")
    refuse_to_overwrite(checkpoint_dirs(cfg), ckpt_path)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model = build_data_and_model(cfg)
    _continue_tensorboard_run(cfg)
    quiet = {} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}  # (unless one is asked for)
    trainer: L.Trainer = build(
        "trainer",
        cfg.trainer,
        callbacks=build_all("callbacks", cfg.get("callbacks")),
        logger=build_all("logger", cfg.get("logger")),
        plugins=[AtomicCheckpointIO()],
        **quiet,
    )

    cost = describe_cost(model.hparams.loss, model.hparams.label_smoothing, model.hparams.num_classes)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.describe({tag: f"the cost: {cost}" for tag in ("train/loss_step", "train/loss_epoch", "val/loss")})
    if ckpt_path is not None:  # safe, ours, the same network and training: or a clear error now
        check_same_recipe(ckpt_path, read_checkpoint(ckpt_path, against=model), model)
    if init_from is not None:  # a new run from a checkpoint's weights: fresh optimiser, schedule, counters
        checkpoint = read_checkpoint(init_from, against=model, same=FUNCTION_SETTINGS, option="init_from")
        model.load_weights(checkpoint["state_dict"])
        log.info("weights (and pixel statistics) loaded from %s", init_from)
    if trainer.is_global_zero:
        for directory in {*checkpoint_dirs(cfg), Path(cfg.paths.output_dir)}:
            remove_stale_temporaries(directory)
    start = time.perf_counter()
    with _disk_full_is_a_user_error(cfg.paths.output_dir):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit as e:  # Lightning exits on Ctrl-C, and raises SIGTERMException (a SystemExit)
            if trainer.interrupted:
                signal_name, status = _stopped_by(e)
                _tell_how_to_resume(cfg, trainer, signal_name)
                raise SystemExit(status) from None
            raise
        metrics = scalar_metrics(trainer.callback_metrics)
        metrics["time/fit_s"] = time.perf_counter() - start
        # (under ddp_spawn the main process's own counter stays 0; the workers' comes back logged)
        metrics["trainer/global_step"] = max(trainer.global_step, int(metrics.get("trainer/global_step", 0)))
        checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # the "best" one
        best = checkpoint.best_model_path if checkpoint is not None else ""
        best_epoch, best_score = _best_of(best, checkpoint.state_key) if best else (None, None)
        if best and best_score is not None:  # (the checkpoint's own record: ddp_spawn's main process has no score)
            metrics[f"{checkpoint.monitor}_best"] = best_score

        if cfg.get("test", True) and not trainer.interrupted:
            if not best:
                log.warning("no best checkpoint: testing the weights at the end of training")
            try:
                trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
            except SystemExit as e:  # Ctrl-C (or SIGTERM) during the test: training itself is complete
                if not trainer.interrupted:
                    raise
                _write_metrics(cfg.paths.output_dir, metrics)
                signal_name, status = _stopped_by(e)
                _tell_how_to_test(cfg, trainer, best, signal_name)
                raise SystemExit(status) from None
            metrics.update(scalar_metrics(trainer.callback_metrics))
        _write_metrics(cfg.paths.output_dir, metrics)
        _finish(trainer, cfg, metrics, best, best_epoch, time.perf_counter() - began)
    return metrics


def _stopped_by(e: SystemExit) -> tuple[str, int]:
    """The signal that interrupted the trainer, and the exit status a shell expects for it
    (128 + the signal's number): Lightning raises SIGTERMException on SIGTERM, SystemExit on Ctrl-C."""
    return ("SIGTERM", 143) if isinstance(e, SIGTERMException) else ("SIGINT", 130)


@contextlib.contextmanager
def _disk_full_is_a_user_error(output_dir: str):
    """A write that fails for lack of space anywhere in the run (TensorBoard's event files,
    metrics.json): the one-line message. (Checkpoints say it themselves: atomic_write.)"""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise no_space(output_dir, f"{e.filename or 'a file of the run'} was not written") from None


def _recorded_overrides(cfg: DictConfig) -> list[str]:
    """The run's own command-line overrides, as Hydra recorded them, less where it ran and
    what it resumed from."""
    overrides = recorded_overrides(cfg.paths.output_dir)
    return [o for o in overrides if not o.startswith(("ckpt_path=", "init_from=", "hydra."))]


@rank_zero_only
def _tell_how_to_resume(cfg: DictConfig, trainer: L.Trainer, signal_name: str) -> None:
    saved = [
        c.ckpt_path for c in trainer.callbacks if isinstance(c, InterruptCheckpoint) and Path(c.ckpt_path).is_file()
    ]
    where = f"in epoch {trainer.current_epoch + 1}, after step {trainer.global_step}"
    if saved:
        resume = command_line(
            "train.py", _recorded_overrides(cfg), ckpt_path=saved[0], **{"hydra.run.dir": cfg.paths.output_dir}
        )
        message = f"{signal_name}: training stopped {where}; checkpoint {saved[0]}.\nResume with:\n  {resume}"
    else:
        message = (
            f"{signal_name}: training stopped {where}; no interrupt checkpoint (callbacks.interrupt_checkpoint is off)"
        )
    tell(message, logging.WARNING)


@rank_zero_only
def _tell_how_to_test(cfg: DictConfig, trainer: L.Trainer, best: str, signal_name: str) -> None:
    checkpoint = best or next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    data = (
        {"data": cfg.data.dataset}
        if cfg.data.dataset == "sample"
        else {"data": cfg.data.dataset, "data.data_dir": str(Path(cfg.data.data_dir).absolute())}
    )
    test = command_line("eval.py", [], ckpt_path=checkpoint, **data) if checkpoint else "(no checkpoint was written)"
    tell(
        f"{signal_name}: the final test was interrupted; training had finished ({trainer.current_epoch} epochs, "
        f"step {trainer.global_step}) and its checkpoints are kept; metrics.json holds its results without "
        f"test/*.\nTest the {'best' if best else 'last'} checkpoint with:\n  {test}",
        logging.WARNING,
    )


@rank_zero_only
def _announce(cfg: DictConfig, command: str) -> None:
    """The run's first lines: where it writes, and what was asked for."""
    log.info("run directory: %s", Path(cfg.paths.output_dir).absolute())
    asked = _recorded_overrides(cfg)
    log.info("%s.py %s", command, " ".join(asked) if asked else "(the defaults, no overrides)")
    if command == "train" and cfg.get("ckpt_path"):
        log.info("resuming the run of %s (its weights, optimiser, schedule and counters)", cfg.ckpt_path)
    if command == "train" and cfg.get("init_from"):
        log.info("a new run from the weights of %s (a fresh optimiser, schedule and counters)", cfg.init_from)


def _best_of(best: str, state_key: str) -> tuple[int | None, float | None]:
    """The best checkpoint's (1-based) epoch and score, as it records them itself."""
    try:
        checkpoint = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 -- for the summary, not a check: the test reads and checks it next
        return None, None
    score = (checkpoint.get("callbacks", {}).get(state_key) or {}).get("best_model_score")
    return int(checkpoint["epoch"]) + 1, None if score is None else float(score)


def summary(
    metrics: dict[str, float],
    best: str,
    best_epoch: int | None,
    wall_s: float,
    output_dir: str,
    loggers: tuple[str, ...] = ("csv", "tensorboard"),
) -> str:
    """The block a run ends with: its result, where its best weights are, and how to look at
    it (``loggers``: which of metrics.csv and TensorBoard's files the run wrote)."""
    lines = []
    if "test/acc" in metrics:
        lines.append(f"test accuracy    {percent(metrics['test/acc'])}   (loss {metrics['test/loss']:.4f})")
    if "val/acc_best" in metrics:
        at = f" at epoch {best_epoch}" if best_epoch else ""
        lines.append(f"best val acc     {percent(metrics['val/acc_best'])}{at}")
    if "early_stopping/stopped_epoch" in metrics:
        why = (
            f"no improvement in {metrics['early_stopping/patience']:.0f} validated epochs"
            if "early_stopping/patience" in metrics
            else "see train.log"
        )
        lines.append(f"stopped early    after epoch {metrics['early_stopping/stopped_epoch']:.0f}: {why}")
    if best:
        lines.append(f"best checkpoint  {best}")
    fit = f", {metrics['time/fit_s']:.1f} s of it fitting" if "time/fit_s" in metrics else ""
    lines.append(f"time             {wall_s:.1f} s{fit}")
    csv = " (and metrics.csv)" if "csv" in loggers else ""
    lines.append(f"metrics          {Path(output_dir).absolute() / 'metrics.json'}{csv}")
    if "tensorboard" in loggers:
        lines.append(f"look at it       tensorboard --logdir {shlex.quote(str(Path(output_dir).absolute()))}")
    return "\n".join(lines)


def _uses(trainer: L.Trainer, kind: type) -> bool:
    return any(isinstance(logger, kind) for logger in trainer.loggers)


@rank_zero_only
def _finish(trainer: L.Trainer, cfg: DictConfig, metrics: dict, best: str, best_epoch, wall_s: float) -> None:
    """The summary in the log and on the console; the run's HParams entry and summary in TensorBoard."""
    kinds = tuple(k for k, cls in (("csv", CSVLogger), ("tensorboard", TensorBoardLogger)) if _uses(trainer, cls))
    text = summary(metrics, best, best_epoch, wall_s, cfg.paths.output_dir, kinds)
    log.info("done.\n%s", text)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            asked = asked_hparams(_recorded_overrides(cfg))
            logger.record_run(run_hparams(cfg), text, trial_name(cfg.paths.output_dir), asked)
            logger.finalize("success")  # flushed and closed: the event files are complete when train() returns


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on a dataset's test split and write metrics.json."""
    quiet_lightning()
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        raise HandpropError("ckpt_path is required: python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt")
    gate.check(cfg)
    with run_files(cfg, "eval"):
        return _evaluate(cfg, ckpt_path)


def _evaluate(cfg: DictConfig, ckpt_path: str) -> dict[str, float]:
    _announce(cfg, "eval")
    checkpoint = read_checkpoint(ckpt_path)  # safe, ours, consistent: read once
    model = model_from_checkpoint(checkpoint)
    datamodule = build("data", cfg.data, _convert_="all")
    trainer: L.Trainer = build(
        "trainer", cfg.trainer, logger=build_all("logger", cfg.get("logger")), callbacks=[ProgressBar()]
    )
    datamodule.setup("test")
    where = f" in {Path(cfg.data.data_dir).absolute()}" if cfg.data.get("data_dir") else ""
    log.info(
        "evaluating %s (epoch %s, step %s) on the test split of %s%s: %s digits",
        Path(ckpt_path).absolute(),
        checkpoint.get("epoch", -1) + 1,
        checkpoint.get("global_step", "?"),
        cfg.data.dataset,
        where,
        f"{len(datamodule.splits['test'].labels):,}",
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = scalar_metrics(trainer.callback_metrics)
    path = _write_metrics(cfg.paths.output_dir, metrics)
    if trainer.is_global_zero:
        accuracy, loss = percent(metrics["test/acc"]), metrics["test/loss"]
        log.info("test accuracy %s (loss %.4f); metrics in %s", accuracy, loss, path)
    return metrics
