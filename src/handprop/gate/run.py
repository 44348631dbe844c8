"""The config gate: the rules of a training run that join settings of different groups,
checked once, before anything is built or written (``config.check_config`` runs them with
every other check, and ``plan`` says what the run will do).

Besides the config it reads two things: the training set's size (the embedded sample's
fixed split, or the header of a full dataset's label file) and the checkpoint that
``ckpt_path`` names (its schedule, and where in an epoch it stopped).

- **Chunks** (``model.chunk``): how many mini-batches one Lightning batch carries, each its
  own optimiser step. Settings that count Lightning's batches cannot run in chunks
  (``chunk_blockers``); ``null`` chooses K from the arithmetic of a step; a run resumed
  inside an epoch keeps its checkpoint's K (Lightning counts the epoch's batches).
- **Manual optimisation**: handprop's training step takes every optimiser step itself,
  where Lightning's ``trainer.gradient_clip_val`` and ``trainer.accumulate_grad_batches``
  do not apply: refused, with the setting that does the job.
- **The schedule's length**: a one-cycle or cosine schedule left ``null`` is as long as the
  run; one set shorter, one whose warm-up would end on its first step, and a resume that
  would run past its checkpoint's schedule are refused.
- **l2** (Nielsen's L2 term): needs an optimiser that adds weight decay to the gradient,
  and no second decay.
- **Resuming** a checkpoint of an earlier handprop whose steps Lightning counted apart is
  refused (``resume_problems``).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hydra.utils import get_object
from omegaconf import DictConfig

from .errors import DataError
from .rules import is_int, positive_int

# model.chunk=null: enough multiply-adds per Lightning batch (about 200 ms of arithmetic on a
# CPU core) that Lightning's loop around it stays a few percent; at most MAX_CHUNK mini-batches.
CHUNK_WORK = 2_000_000_000
MAX_CHUNK = 256

# The schedulers' length arguments, left null in the config and filled in from the run.
SCHEDULE_LENGTH_KEYS = ("total_steps", "T_max")


@dataclass
class Plan:
    """What the gate found for a training run: the problems (one line each, naming the key
    and the fix), and the mini-batches per Lightning batch, with the reason."""

    problems: list[str] = field(default_factory=list)
    chunk: int = 1
    why: str = ""

    def describe(self) -> str:
        return f"training: {self.chunk} optimiser step{'s'[: self.chunk - 1]} per Lightning step, {self.why}"


def plan(cfg: DictConfig) -> Plan:
    """Every rule of the module docstring, for a training run's config (an evaluation's has
    no model: nothing to check)."""
    result = Plan()
    if cfg.get("model") is None or cfg.get("trainer") is None:
        return result
    checkpoint = _checkpoint(cfg.get("ckpt_path"))
    result.problems += manual_optimisation_problems(cfg.trainer)
    result.problems += l2_problems(cfg)
    result.problems += resume_problems(cfg, checkpoint)
    _choose_chunk(cfg, checkpoint, result)
    result.problems += schedule_problems(cfg, planned_steps(cfg, train_size(cfg.data)), checkpoint)
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
    from .data.datasets import SAMPLE_SPLIT, find_raw_files, sample_files  # noqa: PLC0415 -- torch loads here
    from .data.idx import idx_length  # noqa: PLC0415

    dataset = data.get("dataset", "sample")
    try:
        if dataset == "sample":
            return idx_length(sample_files()[1]) - sum(SAMPLE_SPLIT.values())
        return idx_length(find_raw_files(dataset, data.get("data_dir") or ".", "train")[1]) - data.get("val_size", 0)
    except (DataError, KeyError):
        return None


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


# --------------------------------------------------------------------------- manual optimisation


def manual_optimisation_problems(trainer: DictConfig) -> list[str]:
    problems = []
    clip = trainer.get("gradient_clip_val")
    if clip:
        algorithm = trainer.get("gradient_clip_algorithm")
        also = f" model.gradient_clip_algorithm={algorithm}" if algorithm else ""
        problems.append(
            f"trainer.gradient_clip_val={clip}: handprop's training step takes every optimiser step itself "
            f"(Lightning's manual optimisation), where Lightning's clipping does not apply: set "
            f"model.gradient_clip_val={clip}{also} instead"
        )
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if accumulate != 1:
        problems.append(
            f"trainer.accumulate_grad_batches={accumulate}: handprop's training step takes an optimiser step for "
            "every mini-batch (Lightning's manual optimisation, where its accumulation does not apply); a "
            f"mini-batch {accumulate} times as large computes the same gradient: data.batch_size=<{accumulate} x "
            "the batch>"
        )
    return problems


# --------------------------------------------------------------------------- the schedule's length


def called(factory: Callable) -> tuple[Callable, dict]:
    """What a factory (Hydra's ``_partial_``: a functools.partial) calls, and the keywords it
    fixes; a plain callable fixes none."""
    return getattr(factory, "func", factory), getattr(factory, "keywords", {})


def schedule_length(factory, steps: Callable[[], int]) -> dict:
    """The schedule's length in optimiser steps where its config leaves it unset:
    OneCycleLR's total_steps, CosineAnnealingLR's T_max (``steps()`` is asked only then)."""
    target, keywords = called(factory)
    given = {k: v for k, v in keywords.items() if v is not None}
    params = inspect.signature(target).parameters
    if "total_steps" in params and "total_steps" not in given and "epochs" not in given:
        return {"total_steps": steps()}
    if "T_max" in params and "T_max" not in given:
        return {"T_max": steps()}
    return {}


def schedule_problems(cfg: DictConfig, steps: int | float | None, checkpoint: dict | None) -> list[str]:
    node = cfg.get("scheduler")
    if not node or steps is None or math.isinf(steps):
        return []
    try:
        params = inspect.signature(get_object(node.get("_target_"))).parameters
    except (ImportError, ValueError, TypeError):
        return []  # named by the settings check
    key = next((k for k in SCHEDULE_LENGTH_KEYS if k in params), None)
    if key is None:
        return []
    length = node.get(key) if node.get(key) is not None else steps
    problems = []
    if checkpoint is not None:
        recorded = (checkpoint.get("lr_schedulers") or [{}])[0].get(key)
        if is_int(recorded) and recorded < steps:
            problems.append(
                f"ckpt_path={cfg.ckpt_path}: the learning-rate schedule ends after {recorded} steps but this run asks "
                f"for {steps}. Resume with the original trainer.max_epochs, or train on from these weights with a "
                f"fresh optimiser and schedule in a new run: init_from={cfg.ckpt_path} (instead of ckpt_path) "
                "trainer.max_epochs=N."
            )
    elif key == "total_steps" and node.get(key) is not None and length < steps:
        problems.append(
            f"scheduler.{key}={length}: the learning-rate schedule ends after {length} steps but this run asks for "
            f"{steps}. Leave the schedule's length null (the run's own length), or set it to at least that."
        )
    pct_start = node.get("pct_start")
    if key == "total_steps" and is_int(length) and isinstance(pct_start, int | float) and pct_start * length == 1:
        problems.append(
            f"scheduler.pct_start={pct_start}: the learning-rate schedule cannot be built for this run's length "
            f"({{'total_steps': {length}}}): its warm-up would end on its first step. Train for more steps, change "
            "scheduler.pct_start, or use scheduler=cosine / scheduler=none"
        )
    return problems


# --------------------------------------------------------------------------- l2


def l2_problems(cfg: DictConfig) -> list[str]:
    """Nielsen's L2 term needs an optimiser that adds weight decay to the gradient (SGD,
    Adam), only one of the two ways of decaying the weights, and handprop's data module
    (which counts the training examples n of λ/2n)."""
    l2, optimizer = cfg.model.get("l2"), cfg.get("optimizer") or {}
    if not l2 or not isinstance(l2, int | float) or not optimizer.get("_target_"):
        return []
    import torch  # noqa: PLC0415 -- torch loads only when a config asks for l2

    try:
        factory = get_object(optimizer._target_)
    except (ImportError, ValueError):
        return []  # named by the settings check
    decoupled = isinstance(factory, type) and (
        issubclass(factory, torch.optim.AdamW) or bool(optimizer.get("decoupled_weight_decay"))
    )
    name = getattr(factory, "__name__", "the optimizer")
    if decoupled:
        return [
            f"model.l2={l2}: is an L2 term of the cost, which {name}'s decoupled weight decay is not: "
            "use optimizer=sgd, or model.l2=0 and optimizer.weight_decay"
        ]
    decay = optimizer.get("weight_decay")
    if decay:
        return [f"model.l2={l2}: adds to optimizer.weight_decay={decay}: both decay the weights; set one of them to 0"]
    if not str((cfg.get("data") or {}).get("_target_", "")).startswith("handprop."):
        return [f"model.l2={l2}: needs the number of training examples: train with handprop's DigitsDataModule"]
    return []


def _checkpoint(path) -> dict | None:
    from .checkpoint import read_checkpoint  # noqa: PLC0415 -- (checkpoint loads the model)

    return read_checkpoint(path) if path else None
