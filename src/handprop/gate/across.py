"""The rules that join keys: what one setting means for another, checked once per run.

- **Manual optimisation**: handprop's training step takes every optimiser step itself,
  where Lightning's ``trainer.gradient_clip_val`` and ``trainer.accumulate_grad_batches``
  do not apply: refused, with the setting that does the job.
- **The schedule's length**: a one-cycle or cosine schedule left ``null`` is as long as the
  run; one set shorter, one whose warm-up would end on its first step, and a resume that
  would run past its checkpoint's schedule are refused. SDLM's own schedule with a
  scheduler, and early stopping with a schedule planned for all the epochs, are refused.
- **l2** (Nielsen's L2 term): needs an optimiser that adds weight decay to the gradient,
  and no second decay.
- **The model**: label smoothing softens the softmax's target only.
- **The data**: a full dataset needs its directory (or ``download``); the global batch
  divides among the processes; a setting the chosen dataset does not use is refused.
- **Where a run starts**: a resume (``ckpt_path``) or new weights (``init_from``), not both.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig

from .values import is_int, is_number, positive_int, unknown_key

# The schedulers' length arguments, left null in the config and filled in from the run.
SCHEDULE_LENGTH_KEYS = ("total_steps", "T_max")
# Schedules planned for a known number of steps (the run's length), by class name
FIXED_LENGTH_SCHEDULES = {"OneCycleLR": "onecycle", "CosineAnnealingLR": "cosine"}


def problems(cfg: DictConfig, values: dict) -> list[str]:
    """Every rule of the module docstring but the schedule's length (``schedule_problems``,
    which needs the run's length). ``values``: the config's plain values by dotted key."""
    found = _optimiser_and_schedule(cfg) + _model(values) + _data(values) + _start(cfg)
    if cfg.get("trainer") is not None:
        found += manual_optimisation_problems(cfg.trainer)
    if cfg.get("model") is not None:
        found += l2_problems(cfg)
    return found


def _optimiser_and_schedule(cfg: DictConfig) -> list[str]:
    found = []
    optimizer, scheduler = cfg.get("optimizer") or {}, cfg.get("scheduler")
    if str(optimizer.get("_target_", "")).endswith(".SDLM") and optimizer.get("schedule") and scheduler:
        found.append(
            f"scheduler={str(scheduler.get('_target_', '')).rsplit('.', 1)[-1]}: optimizer=sdlm sets its rate "
            "pass by pass on its own schedule (optimizer.schedule); use scheduler=none, or optimizer.schedule=null"
        )
    stopping = (cfg.get("callbacks") or {}).get("early_stopping") or {}
    schedule = str((scheduler or {}).get("_target_", "")).rsplit(".", 1)[-1]
    if stopping.get("patience") is not None and schedule in FIXED_LENGTH_SCHEDULES:
        found.append(
            f"callbacks.early_stopping.patience={stopping.patience}: scheduler={FIXED_LENGTH_SCHEDULES[schedule]} "
            "shapes the learning rate over all of trainer.max_epochs, and a run stopped early ends before "
            "the rate comes down; use scheduler=none (a constant rate, as in Nielsen's chapter 3), "
            "or callbacks.early_stopping.patience=null"
        )
    return found


def _model(values: dict) -> list[str]:
    smoothing, loss = values.get("model.label_smoothing"), values.get("model.loss")
    if smoothing and loss != "cross_entropy":
        return [f"model.label_smoothing={smoothing!r}: applies to model.loss=cross_entropy only; set it to 0"]
    return []


def _data(values: dict) -> list[str]:
    from ..data.augment import AUGMENTATIONS  # noqa: PLC0415 -- torch loads for a run, not for --help

    found = []
    dataset, data_dir = values.get("data.dataset"), values.get("data.data_dir")
    if dataset is not None and dataset != "sample":
        if data_dir is None:
            found.append(f"data.data_dir=None: is needed for dataset={dataset}")
        elif not values.get("data.download") and not Path(data_dir).is_dir():
            found.append(
                f"data.data_dir={data_dir!r}: directory does not exist; point it at the dataset "
                "or set data.download=true"
            )
    if "data.augment" in values and values["data.augment"] is not None:  # (a mapping's values are its own leaves)
        found.append(f"data.augment={values['data.augment']!r}: must be a mapping, e.g. {{rotation: 10}}")
    for key, value in values.items():
        name = key.removeprefix("data.augment.")
        if name == key:
            continue
        if name not in AUGMENTATIONS:
            found.append(unknown_key("data.augment", name, AUGMENTATIONS))
        elif name == "flip" and not (is_number(value) and 0 <= value <= 1):
            found.append(f"data.augment.flip={value!r}: must be a probability in [0, 1] (0 turns it off)")
        elif name != "flip" and not (is_number(value) and value >= 0):
            found.append(f"data.augment.{name}={value!r}: must be a number >= 0 (0 turns it off)")
    # data.batch_size is the global batch: checked here, before any process is launched,
    # when the number of processes is known
    devices, nodes, batch = (values.get(k) for k in ("trainer.devices", "trainer.num_nodes", "data.batch_size"))
    if positive_int(devices) and positive_int(nodes or 1) and positive_int(batch):
        problem = batch_problem(batch, devices * (nodes or 1), f"trainer.devices={devices} x trainer.num_nodes={nodes}")
        found += [problem] if problem else []
    return found


def notes(values: dict) -> list[str]:
    """Settings that do not apply to the option chosen, named (an experiment sets full
    MNIST's split, and runs on the embedded sample all the same)."""
    if values.get("data.dataset") != "sample":
        return []
    return [
        f"data.{key}={values[f'data.{key}']!r} does not apply to data=sample (its 5,000 digits are split 4,000 / 500 "
        "/ 500 for good): not used; data=mnist makes a split of its own"
        for key in ("val_size", "data_dir", "download")
        if values.get(f"data.{key}") not in (None, False)
    ]


def batch_problem(batch_size: int, world: int, processes: str = "") -> str | None:
    """``data.batch_size`` is the global batch: it must divide evenly among the ``world``
    processes (``processes``: how their number came about). None when it does."""
    if not batch_size % world:
        return None
    return (
        f"data.batch_size={batch_size!r}: is the global batch and must divide evenly among the {world} processes"
        f"{f' ({processes})' if processes else ''}, e.g. data.batch_size={max(world, batch_size // world * world)}"
    )


def _start(cfg: DictConfig) -> list[str]:
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        return [
            f"init_from={cfg.init_from} and ckpt_path={cfg.ckpt_path}: choose one -- ckpt_path resumes "
            "a run (its optimiser, schedule and counters), init_from starts a new run from a checkpoint's weights"
        ]
    return []


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
