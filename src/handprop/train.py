"""train(cfg) and evaluate(cfg): build everything from the composed config and run it.

The entry points ``train.py`` / ``eval.py`` at the top of the repository compose the
config with Hydra and call these. Every run writes into ``cfg.paths.output_dir``:
checkpoints/, tensorboard/ and metrics.json (one flat JSON object of final metrics).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from .callbacks import GradientAuditError, NumericalError, ReplicaError
from .config import ConfigError, check_config, config_problems  # noqa: F401 (config_problems: part of the API)
from .data import DataError
from .module import DigitClassifier, ScheduleError

log = logging.getLogger(__name__)


def run_name(overrides: str, limit: int = 96) -> str:
    """A run's name from its command-line overrides (Hydra's ``override_dirname``), safe as
    one directory name: no '/', at most ``limit`` characters -- a longer one keeps its
    start and ends in a hash of the whole, so that different runs keep different names."""
    import hashlib

    name = overrides.replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# conf/logger/tensorboard.yaml: version: ${run_name:${hydra:job.override_dirname}}
OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def launched_rank() -> int:
    """This process's global rank when a launcher started every process (torchrun sets
    RANK, srun SLURM_PROCID); 0 otherwise (Lightning's own launcher passes its children
    their own Hydra settings)."""
    import os

    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


# conf/hydra/default.yaml: processes 1..N of a torchrun / srun launch share rank 0's run
# directory; they log to train_rank<N>.log and leave .hydra/ to rank 0.
OmegaConf.register_new_resolver("job_name", lambda name: name if launched_rank() == 0 else f"{name}_rank{launched_rank()}", replace=True)
OmegaConf.register_new_resolver("output_subdir", lambda subdir: subdir if launched_rank() == 0 else None, replace=True)


class UserError(ValueError):
    """Raised for inputs a user can fix (config, data, checkpoint); entry points print it."""


# --------------------------------------------------------------------------- building blocks


def _instantiate_all(group: DictConfig | None) -> list:
    """Callbacks and loggers are named entries, so that ``callbacks.X=null`` drops one."""
    return [instantiate(c) for c in (group or {}).values() if c is not None]


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1}


@rank_zero_only
def _write_metrics(output_dir: str, metrics: dict[str, float]) -> Path:
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    log.info("metrics written to %s", path)
    return path


def _checked_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def _refuse_to_overwrite(cfg: DictConfig, ckpt_path: str | None) -> None:
    """A new run in a directory that holds another run's checkpoints would overwrite them
    (last.ckpt first). Only resuming one of that directory's own checkpoints may write there."""
    dirs = {Path(c.dirpath).resolve() for c in (cfg.get("callbacks") or {}).values() if c is not None and c.get("dirpath")}
    existing = sorted(p for d in dirs if d.is_dir() for p in d.glob("*.ckpt"))
    if not existing or (ckpt_path is not None and Path(ckpt_path).resolve().parent in dirs):
        return
    last = next((p for p in existing if p.stem in ("last", "interrupted")), existing[-1])
    raise UserError(
        f"{last.parent} already holds checkpoints of another run ({', '.join(p.name for p in existing)}); "
        f"this run would overwrite them. Resume that run with ckpt_path={last} (and the same "
        "hydra.run.dir), or start this one in a fresh directory (the default hydra.run.dir makes one per run)."
    )


def _continue_tensorboard_run(cfg: DictConfig) -> None:
    """A run resumed into its own directory keeps writing to its TensorBoard run, even when
    the resume changes overrides (and with them the run's name), e.g. more epochs."""
    tb = (cfg.get("logger") or {}).get("tensorboard")
    if not cfg.get("ckpt_path") or tb is None:
        return
    root = Path(cfg.paths.output_dir) / str(tb.get("name") or "")
    existing = sorted({p.parent for p in root.rglob("events.out.tfevents.*")}) if root.is_dir() else []
    if len(existing) == 1 and existing[0] != root:
        with open_dict(cfg):
            cfg.logger.tensorboard.version = existing[0].relative_to(root).as_posix()


def read_checkpoint(ckpt_path: str, model: torch.nn.Module | None = None) -> dict:
    """Load a checkpoint safely and make sure it is a handprop checkpoint (for ``model``).

    ``weights_only=True``: only tensors and plain Python data are unpickled -- a file
    whose pickle would build other objects (and could run code doing so) is refused
    before any of it runs. With ``model``, every parameter's shape is compared, so that a
    checkpoint of another architecture is named as such instead of failing deep inside
    Lightning."""
    import pickle
    import re

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if not unsafe:  # not a pickle torch.save writes; torch's advice (weights_only=False) is not ours
            found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(e))
            raise UserError(f"ckpt_path={ckpt_path} is not a handprop checkpoint (cannot be read: not a file "
                            f"torch.save writes{': ' + found.group(1) if found else ''})") from e
        names = re.findall(r"GLOBAL (\S+?)[.,]?(?:\s|$)", unsafe[0])
        raise UserError(
            f"ckpt_path={ckpt_path}: refused to load: the file holds Python objects other than tensors and plain "
            f"data (it asks for {', '.join(names) or 'an unknown global'}), which could run code while loading. "
            "handprop's own checkpoints never do; load only checkpoints you made or trust."
        ) from e
    except Exception as e:  # truncated, not a zip/pickle, ...
        reason = "the file is empty" if Path(ckpt_path).stat().st_size == 0 else str(e).strip() or type(e).__name__
        raise UserError(f"ckpt_path={ckpt_path} is not a handprop checkpoint (cannot be read: {reason})") from e
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise UserError(f"ckpt_path={ckpt_path} is not a handprop checkpoint (no state_dict and hyper_parameters)")
    if model is not None:
        ours = model.state_dict()
        theirs = checkpoint["state_dict"]
        problems = [
            f"{k}: checkpoint {tuple(theirs[k].shape)}, this run {tuple(v.shape)}"
            for k, v in ours.items() if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
        ]
        problems += [f"{k}: missing from the checkpoint" for k in ours if k not in theirs]
        problems += [f"{k}: in the checkpoint, not in this network" for k in theirs if k not in ours]
        if problems:
            hp = checkpoint["hyper_parameters"]
            raise UserError(
                f"ckpt_path={ckpt_path} holds a different network than this run's model config:\n  "
                + "\n  ".join(problems)
                + f"\nResume with the checkpoint's own model settings, e.g. model.hidden={list(hp.get('hidden', []))}"
                f" model.activation={hp.get('activation')}"
            )
    return checkpoint


# --------------------------------------------------------------------------- entry points


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test with the best checkpoint, then write metrics.json. Returns the metrics."""
    try:
        check_config(cfg)
        ckpt_path = _checked_ckpt_path(cfg.get("ckpt_path"))
        _refuse_to_overwrite(cfg, ckpt_path)
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data, _convert_="all")
        model = instantiate(
            cfg.model,
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            _convert_="all",
        )
        _continue_tensorboard_run(cfg)
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")), logger=_instantiate_all(cfg.get("logger"))
        )
    except (ValueError, InstantiationException) as e:  # DataError is a ValueError
        raise UserError(str(e)) from e

    if ckpt_path is not None:
        read_checkpoint(ckpt_path, model)  # safe, ours, the same network: or a clear error now
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (DataError, ScheduleError, GradientAuditError, ReplicaError, NumericalError) as e:
        raise UserError(str(e)) from e
    except SystemExit as e:  # Lightning exits on Ctrl-C, and raises SIGTERMException (a SystemExit)
        if trainer.interrupted:
            sigterm = isinstance(e, SIGTERMException)
            _tell_how_to_resume(cfg, trainer, signal_name="SIGTERM" if sigterm else "SIGINT")
            raise SystemExit(143 if sigterm else 130) from None
        raise
    metrics = _scalars(trainer.callback_metrics)
    metrics["time/fit_s"] = time.perf_counter() - start
    # (under ddp_spawn the main process's own counter stays 0; the workers' comes back logged)
    metrics["trainer/global_step"] = max(trainer.global_step, int(metrics.get("trainer/global_step", 0)))
    checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # the "best" one
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if best and checkpoint.best_model_score is not None:
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)

    if cfg.get("test", True) and not trainer.interrupted:
        if not best:
            log.warning("no best checkpoint: testing the weights at the end of training")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(_scalars(trainer.callback_metrics))
    _log_hparams(trainer, cfg, metrics)
    _write_metrics(cfg.paths.output_dir, metrics)
    return metrics


@rank_zero_only
def _tell_how_to_resume(cfg: DictConfig, trainer: L.Trainer, signal_name: str) -> None:
    from .callbacks import InterruptCheckpoint

    saved = [c.ckpt_path for c in trainer.callbacks if isinstance(c, InterruptCheckpoint) and Path(c.ckpt_path).is_file()]
    where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
    if saved:
        # the run's own overrides, as Hydra recorded them, so that the command resumes the same run
        recorded = Path(cfg.paths.output_dir) / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(recorded) if recorded.is_file() else []
        keep = [o for o in overrides if not str(o).startswith(("ckpt_path=", "hydra."))]
        args = " ".join(shlex.quote(str(o)) for o in keep)
        message = (f"{signal_name}: training stopped at {where}; checkpoint {saved[0]}.\nResume with:\n  python train.py "
                   f"{args + ' ' if args else ''}ckpt_path={saved[0]} hydra.run.dir={cfg.paths.output_dir}")
    else:
        message = f"{signal_name}: training stopped at {where}; no interrupt checkpoint (callbacks.interrupt_checkpoint is off)"
    print(message, file=sys.stderr, flush=True)


def flat_config(cfg: DictConfig, drop=("paths", "callbacks", "logger", "hydra")) -> dict[str, bool | int | float | str]:
    """The run's config as TensorBoard's HParams tab takes it: dotted keys, scalar values
    (lists as text, None as "null"); where files go and what gets logged left out."""
    tree = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in drop}
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = "null" if node is None else str(node)

    walk("", tree)
    return flat


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """One HParams record per run: its config and final metrics, so that the runs of a
    sweep line up in TensorBoard's HParams tab. The metrics go under ``final/`` (Lightning
    also writes them as scalars at step 0, which must not join the val/acc curve)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    final = {f"final/{k}": v for k, v in metrics.items() if not k.startswith(("time/", "trainer/"))}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat_config(cfg), metrics=final)
            logger.finalize("success")  # flushed and closed: the event files are complete when train() returns


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on a dataset's test split and write metrics.json."""
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        raise UserError("ckpt_path is required: python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt")
    _checked_ckpt_path(ckpt_path)
    try:
        check_config(cfg)
    except ConfigError as e:
        raise UserError(str(e)) from e
    read_checkpoint(ckpt_path)
    try:
        model = DigitClassifier.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # ours in form, not in content
        raise UserError(f"ckpt_path={ckpt_path} is not a handprop checkpoint: {e}") from e
    datamodule = instantiate(cfg.data, _convert_="all")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=_instantiate_all(cfg.get("logger")))
    try:
        trainer.test(model, datamodule=datamodule)
    except DataError as e:
        raise UserError(str(e)) from e
    metrics = _scalars(trainer.callback_metrics)
    _write_metrics(cfg.paths.output_dir, metrics)
    return metrics
