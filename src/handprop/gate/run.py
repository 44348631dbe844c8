"""The training run's plan: how many steps it takes, in chunks of how many mini-batches.

- **Chunks** (``model.chunk``): how many mini-batches one Lightning batch carries, each its
  own optimiser step. Settings that count Lightning's batches cannot run in chunks
  (``chunk_blockers``); ``null`` chooses K from the arithmetic of a step; a run resumed
  inside an epoch keeps its checkpoint's K (Lightning counts the epoch's batches).
- **The run's length** in optimiser steps (``planned_steps``), from the training set's size
  (the embedded sample's fixed split, or the header of a full dataset's label file): the
  schedule's length is checked against it (``across.schedule_problems``).
- **Resuming** a checkpoint of an earlier handprop whose steps Lightning counted apart is
  refused (``resume_problems``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from ..errors import DataError
from .across import schedule_problems
from .values import is_int, positive_int

# model.chunk=null: enough multiply-adds per Lightning batch that Lightning's loop around it
# is a small part of the batch's time; at most MAX_CHUNK mini-batches.
CHUNK_WORK = 2_000_000_000
MAX_CHUNK = 256


@dataclass
class Plan:
    """What the gate found for a training run: the problems (one line each, naming the key
    and the fix), and the mini-batches per Lightning batch, with the reason."""

    problems: list[str] = field(default_factory=list)
    chunk: int = 1
    why: str = ""
    notes: list[str] = field(default_factory=list)  # settings that do not apply, named

    def describe(self) -> str:
        return f"training: {self.chunk} optimiser step{'s'[: self.chunk - 1]} per Lightning step, {self.why}"


def plan(cfg: DictConfig, problems: list[str], notes: list[str]) -> Plan:
    """The plan of a training run whose values are each good (an evaluation's config has no
    model: nothing to plan), with ``problems`` and ``notes`` found so far and the run's own."""
    result = Plan(list(problems), notes=list(notes))
    if cfg.get("model") is None or cfg.get("trainer") is None:
        return result
    checkpoint = _checkpoint(cfg.get("ckpt_path"))
    result.problems += resume_problems(cfg, checkpoint)
    _choose_chunk(cfg, checkpoint, result)
    size = train_size(cfg.data)
    result.problems += val_size_problems(cfg.data, size)
    result.problems += schedule_problems(cfg, planned_steps(cfg, size), checkpoint)
    return result


# --------------------------------------------------------------------------- the run's size


def world_size(trainer: DictConfig) -> int:
    """The number of training processes, as Lightning counts them: a launcher's WORLD_SIZE, else
    devices x nodes (``auto``, -1: every GPU when training on GPUs, else one process)."""
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if positive_int(devices):
        return devices * nodes
    if isinstance(devices, Sequence) and not isinstance(devices, str):  # (a list of device indices)
        return len(devices) * nodes
    import torch  # noqa: PLC0415 -- torch loads only for a config that asks for every device

    gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return (torch.cuda.device_count() if gpu else 1) * nodes


def train_size(data: DictConfig) -> int | None:
    """The number of training digits (all processes together), from the files' headers; None
    where the files are not there yet (``data.download``: the data module fetches them)."""
    from ..data.datasets import SAMPLE_SPLIT, find_raw_files, sample_files  # noqa: PLC0415 -- torch loads here
    from ..data.idx import idx_length  # noqa: PLC0415

    dataset = data.get("dataset", "sample")
    try:
        if dataset == "sample":
            return idx_length(sample_files()[1]) - sum(SAMPLE_SPLIT.values())
        return idx_length(find_raw_files(dataset, data.get("data_dir") or ".", "train")[1]) - data.get("val_size", 0)
    except (DataError, KeyError):
        return None


def val_size_problems(data: DictConfig, size: int | None) -> list[str]:
    """A full dataset's validation split must leave digits to train on (``size``: what is left)."""
    val_size = data.get("val_size")
    if size is None or data.get("dataset", "sample") == "sample" or size > 0:
        return []
    return [f"data.val_size={val_size}: must be between 1 and {size + val_size - 1} (the training file's digits)"]


def steps_per_epoch(train: int, batch_size: int, world: int, loader: str = "tensor") -> int:
    """Mini-batches (optimiser steps) per epoch and process: handprop's loader cuts every
    process's share to one length, torch's DistributedSampler pads it to one."""
    share = train // world if loader == "tensor" else math.ceil(train / world)
    return math.ceil(share / max(batch_size // world, 1))


def planned_steps(cfg: DictConfig, size: int | None) -> int | float | None:
    """The run's optimiser steps (infinite without a limit); None where Lightning decides
    them from what only the running trainer knows (``overfit_batches``, ``fast_dev_run``)."""
    trainer, data = cfg.trainer, cfg.data
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    limit = max_steps if is_int(max_steps) and max_steps >= 0 else math.inf
    if max_epochs is None:  # Lightning's: 1000 epochs, unless max_steps limits the run
        max_epochs = 1000 if math.isinf(limit) else -1
    if max_epochs == -1:
        return limit
    if size is None or trainer.get("overfit_batches") or trainer.get("fast_dev_run"):
        return None
    batch_size = data.get("batch_size", 1)
    per_epoch = steps_per_epoch(size, batch_size, world_size(trainer), data.get("loader", "tensor"))
    fraction = trainer.get("limit_train_batches")
    if is_int(fraction):
        per_epoch = min(per_epoch, fraction)
    elif isinstance(fraction, float):
        per_epoch = int(per_epoch * fraction)
    return min(per_epoch * max_epochs, limit)


# --------------------------------------------------------------------------- chunks


def chunk_blockers(cfg: DictConfig) -> list[str]:
    """Why this run must carry one mini-batch per Lightning batch, if it must: these
    settings count Lightning's batches (and chunks come from handprop's own loader)."""
    trainer, data = cfg.trainer, cfg.data
    every_n_steps = any(node.get("every_n_train_steps") for node in (cfg.get("callbacks") or {}).values() if node)
    checks = {
        "trainer.limit_train_batches": not _whole(trainer.get("limit_train_batches")),
        "trainer.overfit_batches": bool(trainer.get("overfit_batches")),
        "trainer.fast_dev_run": bool(trainer.get("fast_dev_run")),
        "trainer.val_check_interval": not _whole(trainer.get("val_check_interval")),
        "a checkpoint every n training steps": every_n_steps,
        "data.loader=dataloader": data.get("loader", "tensor") != "tensor",
    }
    return [reason for reason, applies in checks.items() if applies]


def _whole(value) -> bool:
    """None or 1.0: the whole epoch, for Lightning's limits and intervals (an int counts batches)."""
    return value is None or (value == 1.0 and not is_int(value))


def _choose_chunk(cfg: DictConfig, checkpoint: dict | None, result: Plan) -> None:
    asked, blockers = cfg.model.get("chunk"), chunk_blockers(cfg)
    if positive_int(asked) and asked > 1 and blockers:
        result.problems.append(
            f"model.chunk={asked}: needs one mini-batch per step with {', '.join(blockers)}: set model.chunk=1 "
            "(or null, which chooses)"
        )
        return
    if asked is None and blockers:
        result.chunk, result.why = 1, f"one per Lightning step with {', '.join(blockers)}"
    elif asked is None:
        world, model = world_size(cfg.trainer), cfg.model
        sizes = [model.get("input_size", 784), *model.get("hidden", []), model.get("num_classes", 10)]
        work = max(cfg.data.get("batch_size", 1) // world, 1) * sum(a * b for a, b in zip(sizes, sizes[1:]))
        result.chunk = max(1, min(MAX_CHUNK, round(CHUNK_WORK / max(work, 1))))
        result.why = "chosen for the network's size (model.chunk=null)"
    elif positive_int(asked):
        result.chunk, result.why = asked, f"model.chunk={asked}"
    _keep_the_checkpoints_chunk(cfg, checkpoint, asked, blockers, result)


def resume_problems(cfg: DictConfig, checkpoint: dict | None) -> list[str]:
    """A checkpoint handprop wrote before every step ran on Lightning's manual optimisation
    (no "optimisation" record) and trained one mini-batch per Lightning batch: Lightning
    counted its steps as automatic optimisation's, and a resume would start counting again
    at 0 (its schedule, max_steps and logging with it). Its chunked runs counted as today."""
    if checkpoint is None or checkpoint.get("optimisation") == "manual" or not checkpoint.get("global_step"):
        return []
    state = _loader_state(checkpoint)
    if state and state.get("chunk", 1) > 1:
        return []
    return [
        f"ckpt_path={cfg.ckpt_path}: written by an earlier handprop, which counted its steps apart from today's "
        "(Lightning's automatic optimisation): a resume would start its step count, schedule and logging at 0. "
        f"Train on from its weights in a new run instead: init_from={cfg.ckpt_path}"
    ]


def _loader_state(checkpoint: dict | None) -> dict | None:
    """The training loader's position in a checkpoint (handprop's device loader keeps one)."""
    return next((v.get("train_loader") for k, v in (checkpoint or {}).items() if k.endswith("DataModule")), None)


def _keep_the_checkpoints_chunk(cfg, checkpoint: dict | None, asked, blockers: list[str], result: Plan) -> None:
    """A run resumed inside an epoch trains in the checkpoint's chunk size: Lightning counts
    the epoch's batches, validates when the count reaches the epoch's length and logs by
    it, so the unit cannot change inside an epoch. (From a checkpoint taken at an epoch's
    end it can: the next epoch starts afresh.)"""
    state = _loader_state(checkpoint)
    if not state:  # (not handprop's device loader: it keeps no position)
        return
    world = world_size(cfg.trainer)
    steps = steps_per_epoch(state["size"], cfg.data.get("batch_size", 1), world)
    theirs = state.get("chunk", 1)
    if not 0 < state["consumed"] < steps or theirs == result.chunk:
        return
    if asked is not None or (theirs > 1 and blockers):
        why = f"model.chunk={asked}" if asked is not None else ", ".join(blockers)
        result.problems.append(
            f"ckpt_path={cfg.ckpt_path}: the checkpoint stopped inside an epoch trained {theirs} optimiser step(s) per "
            f"Lightning step; this run ({why}) would train {result.chunk}. Resume with model.chunk={theirs} "
            "(or null), or from a checkpoint taken at an epoch's end (checkpoints/last.ckpt)"
        )
        return
    result.chunk, result.why = theirs, "as the checkpoint's epoch was"


def _checkpoint(path) -> dict | None:
    from ..checkpoint import read_checkpoint  # noqa: PLC0415 -- (checkpoint loads the model)

    return read_checkpoint(path) if path else None
