"""Every config value checked before any work: the key named, the allowed values said.

``check_config`` runs before a single tensor is built, and reports every problem at once:

1. **The settings of the code each node calls** (``settings.py``): unknown keys, with the
   nearest real key suggested, and values of the wrong type, read from the signatures.
2. **What handprop's own constructors refuse** (``build.construction_problems``): the
   model, the data module and handprop's callbacks check their own values, once, where
   they are taken (``rules.py``); they are built here on the meta device, and each refusal
   is named by its config key.
3. **Ranges of the settings of other libraries' code** (``RANGES``): PyTorch's optimisers
   and schedules, Lightning's trainer and callbacks.
4. **Rules that join keys of different groups**: the global batch must divide among the
   processes; a run resumes (``ckpt_path``) or starts from weights (``init_from``), not both;
   and, once every value is good on its own, the training run's rules of ``gate.py``
   (chunks, the schedule's length, l2, what Lightning's manual optimisation changes).

A key that is not in the config at all (``model.hiden=3``) is refused by Hydra before any
of this runs; ``unknown_override_message`` gives that case the same kind of message (the
entry points ask it first).
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError

from .errors import ConfigError
from .gate import Plan, plan
from .rules import POSITIVE_INT, SettingError, is_int, is_number, positive_int, probability, unknown_key
from .rundir import override_parser
from .settings import WIRED, setting_problems, signature_of

__all__ = ["ConfigError", "check_config", "config_problems", "exit_on_unknown_override", "unknown_override_message"]


# --------------------------------------------------------------------------- other libraries' settings


def _or_null(rule: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or rule(v)


def _limit_batches(v) -> bool:  # Lightning's limit_*_batches: a count, or a fraction of the epoch
    return v is None or (is_int(v) and v >= 0) or (is_number(v) and 0 <= v <= 1)


_POSITIVE_INT = (positive_int, POSITIVE_INT)
_POSITIVE_INT_OR_NULL = (_or_null(positive_int), POSITIVE_INT)  # null: if the signature takes it

# Schedules planned for a known number of steps (the run's length), by class name
FIXED_LENGTH_SCHEDULES = {"OneCycleLR": "onecycle", "CosineAnnealingLR": "cosine"}

# (key pattern, rule, allowed values). Patterns are fnmatch-style over dotted keys; a key
# a config does not have is skipped. The first matching rule that fails names the key.
# A value a rule lets through is still checked against its parameter's type, so a rule
# that lets null through leaves it to the signature to say whether null is allowed.
RANGES: list[tuple[str, Callable[[object], bool], str]] = [
    (
        "seed",
        _or_null(lambda v: is_int(v) and 0 <= v < 2**32),
        "must be an integer from 0 to 4294967295, or null for an unseeded run",
    ),
    ("optimizer.lr", lambda v: is_number(v) and v > 0, "must be a positive number, e.g. optimizer.lr=0.001"),
    ("optimizer.weight_decay", lambda v: is_number(v) and v >= 0, "must be a number >= 0"),
    ("optimizer.momentum", probability, "must be in [0, 1), e.g. optimizer.momentum=0.9"),
    ("optimizer.eps", lambda v: is_number(v) and v > 0, "must be a small positive number, e.g. 1e-8"),
    ("scheduler.pct_start", lambda v: is_number(v) and 0 < v < 1, "must be a fraction in (0, 1), e.g. 0.2"),
    ("scheduler.eta_min", lambda v: is_number(v) and v >= 0, "must be a number >= 0"),
    ("scheduler.max_lr", lambda v: is_number(v) and v > 0, "must be a positive number"),
    ("scheduler.T_max", *_POSITIVE_INT_OR_NULL),
    ("scheduler.total_steps", *_POSITIVE_INT_OR_NULL),
    ("trainer.max_epochs", lambda v: v is None or (is_int(v) and (v > 0 or v == -1)), "must be a positive integer"),
    (
        "trainer.max_steps",
        lambda v: is_int(v) and (v > 0 or v == -1),
        "must be a positive integer, or -1 for no limit",
    ),
    ("trainer.num_nodes", *_POSITIVE_INT),
    (
        "trainer.devices",
        lambda v: (
            (is_int(v) and (v > 0 or v == -1))
            or isinstance(v, str)
            or (isinstance(v, list) and all(is_int(i) and i >= 0 for i in v))
        ),
        "must be a positive integer, -1 (all), 'auto', or a list of device indices",
    ),
    ("trainer.accumulate_grad_batches", *_POSITIVE_INT),
    ("trainer.log_every_n_steps", lambda v: is_int(v) and v >= 0, "must be an integer >= 0"),
    ("trainer.check_val_every_n_epoch", *_POSITIVE_INT_OR_NULL),
    (
        "trainer.gradient_clip_val",
        lambda v: v is None or (is_number(v) and v >= 0),
        "must be a number >= 0 (e.g. 1.0), or null for no clipping",
    ),
    (
        "trainer.limit_train_batches",
        lambda v: v is None or (_limit_batches(v) and v > 0),
        "must be null (all), a number of batches >= 1, or a fraction in (0, 1]: a run must train on something",
    ),
    (
        "trainer.limit_*_batches",
        _limit_batches,
        "must be null (all), a number of batches >= 0, or a fraction in [0, 1]",
    ),
    ("trainer.overfit_batches", _limit_batches, "must be 0 (off), a number of batches, or a fraction in [0, 1]"),
    ("callbacks.*_checkpoint.every_n_epochs", *_POSITIVE_INT),  # Lightning reads 0 as "never save"
    ("callbacks.*.save_top_k", lambda v: is_int(v) and v >= -1, "must be an integer >= -1 (-1: keep all)"),
    ("callbacks.*.refresh_rate", lambda v: is_int(v) and v >= 0, "must be an integer >= 0 (0: no bar)"),
]


def _choices() -> dict[str, tuple]:
    from lightning.pytorch.accelerators import AcceleratorRegistry  # noqa: PLC0415 -- Lightning loads only for a check
    from lightning.pytorch.strategies import StrategyRegistry  # noqa: PLC0415 -- Lightning loads only for a check

    return {
        "trainer.accelerator": ("auto", "cpu", "gpu", *sorted(AcceleratorRegistry.available_accelerators() - {"cpu"})),
        "trainer.strategy": ("auto", *(s for s in StrategyRegistry.available_strategies() if "find_unused" not in s)),
    }


def _leaves(node, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, resolved plain value) of every value in a config, lists kept whole.
    Interpolated values (``max_lr: ${optimizer.lr}``) are skipped: they are checked, and
    named, where they are set; so is one that cannot be resolved here (``${hydra:...}``
    outside a Hydra run): it is Hydra's to fill in, not the user's to fix."""
    for key in node:
        if (not prefix and key == "hydra") or OmegaConf.is_interpolation(node, key):
            continue  # Hydra's own settings; values set elsewhere
        path, value = f"{prefix}{key}", node[key]
        if isinstance(value, DictConfig):
            yield from _leaves(value, path + ".")
        elif isinstance(value, ListConfig):
            try:
                yield path, OmegaConf.to_container(value, resolve=True)
            except InterpolationResolutionError:  # an item set elsewhere: checked there
                continue
        else:
            yield path, value


# --------------------------------------------------------------------------- the whole check


def config_problems(cfg: DictConfig) -> list[str]:
    """Every user-facing value that cannot work, one line each, naming the key and the fix."""
    return _check(cfg).problems


def check_config(cfg: DictConfig) -> Plan:
    """Every check, once, before anything is built: a ConfigError naming every problem, or
    the training run's plan (the gate's)."""
    result = _check(cfg)
    if result.problems:
        raise ConfigError("bad config:\n  " + "\n  ".join(result.problems))
    return result


def _check(cfg: DictConfig) -> Plan:
    problems = _value_problems(cfg)
    return Plan(problems) if problems else plan(cfg)  # the gate's rules read values that are each good


def _value_problems(cfg: DictConfig) -> list[str]:
    # torch and Lightning load here, not when the entry points import this module (--help needs neither)
    from .build import construction_problems  # noqa: PLC0415 -- torch and Lightning load only for a check
    from .data import per_process_batch  # noqa: PLC0415 -- torch and Lightning load only for a check

    problems: dict[str, str] = {}  # key -> its first problem

    def report(line: str) -> None:
        problems.setdefault(line.split("=")[0].split(":")[0], line)

    values = dict(_leaves(cfg))
    for key, allowed in _choices().items():
        if key in values and values[key] not in allowed:
            report(f"{key}={values[key]!r}: must be one of {', '.join(map(str, allowed))}")
    for key, value in values.items():
        for pattern, rule, allowed in RANGES:
            if fnmatch.fnmatchcase(key, pattern):
                if not rule(value):
                    report(f"{key}={value!r}: {allowed}")
                break
    for line in setting_problems(cfg, skip=set(problems)):
        report(line)
    for line in construction_problems(cfg, skip=set(problems)):
        report(line)

    optimizer, scheduler = cfg.get("optimizer") or {}, cfg.get("scheduler")
    if str(optimizer.get("_target_", "")).endswith(".SDLM") and optimizer.get("schedule") and scheduler:
        report(
            f"scheduler={str(scheduler.get('_target_', '')).rsplit('.', 1)[-1]}: optimizer=sdlm sets its rate "
            "pass by pass on its own schedule (optimizer.schedule); use scheduler=none, or optimizer.schedule=null"
        )
    stopping = (cfg.get("callbacks") or {}).get("early_stopping") or {}
    schedule = str((scheduler or {}).get("_target_", "")).rsplit(".", 1)[-1]
    if stopping.get("patience") is not None and schedule in FIXED_LENGTH_SCHEDULES:
        report(
            f"callbacks.early_stopping.patience={stopping.patience}: scheduler={FIXED_LENGTH_SCHEDULES[schedule]} "
            "shapes the learning rate over all of trainer.max_epochs, and a run stopped early ends before "
            "the rate comes down; use scheduler=none (a constant rate, as in Nielsen's chapter 3), "
            "or callbacks.early_stopping.patience=null"
        )
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        report(
            f"init_from={cfg.init_from} and ckpt_path={cfg.ckpt_path}: choose one -- ckpt_path resumes "
            "a run (its optimiser, schedule and counters), init_from starts a new run from a checkpoint's weights"
        )
    # data.batch_size is the global batch: checked here, before any process is launched,
    # when the number of processes is known
    devices, nodes, batch = (values.get(k) for k in ("trainer.devices", "trainer.num_nodes", "data.batch_size"))
    if positive_int(devices) and positive_int(nodes or 1) and positive_int(batch) and "data.batch_size" not in problems:
        try:
            per_process_batch(batch, devices * (nodes or 1), f"trainer.devices={devices} x trainer.num_nodes={nodes}")
        except SettingError as e:
            report(e.message("data."))

    order = list(values)  # report in the config's own order
    return [problems[k] for k in sorted(problems, key=lambda k: order.index(k) if k in order else len(order))]


# --------------------------------------------------------------------------- keys not in the config


def exit_on_unknown_override(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """For the entry points, before Hydra starts: a key that is not in the config
    (``model.hiden=3``) ends the program with the message, exit status 2."""
    problem = unknown_override_message(config_dir, config_name, argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def unknown_override_message(config_dir: str | Path, config_name: str, argv: list[str]) -> str | None:
    """Hydra refuses ``model.hiden=3`` (no such key) with "Could not override ... To append
    to your config use +model.hiden=3" -- advice that only moves the failure. This composes
    the config the way the entry point will and, for that one case (OmegaConf's missing-key
    error under Hydra's), returns a message naming the key, the nearest real key and the
    keys that exist there. None when the overrides compose, or fail for any other reason,
    which Hydra reports well itself. ``argv``: the command line after the script; with
    flags other than ``-m`` it is left to Hydra."""
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        return None  # --cfg, --help, -cn ...: another config or no run
    try:
        parsed = override_parser().parse_overrides(overrides)
    except OverrideParseException:
        return None  # a syntax error: Hydra's message shows where
    plain = {}  # key -> the override as typed; -m a=1,2: one value is enough to know the key
    for override in parsed:
        if not override.is_sweep_override():
            plain[override.key_or_group] = override.input_line
        elif not override.is_interval_sweep():  # (an Optuna interval() has no value to take: the sweeper checks it)
            plain[override.key_or_group] = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
            compose(config_name, list(plain.values()))
        return None
    except ConfigCompositionException as e:
        missing = e.__cause__  # OmegaConf's own error, naming the missing key and where it was looked for
        if not isinstance(missing, (ConfigKeyError, ConfigAttributeError)) or not isinstance(
            missing.parent_node, DictConfig
        ):
            return None  # a wrong type, a missing option: Hydra's message says it well
    except Exception:  # noqa: BLE001 -- any other failure is Hydra's to report, as it will when it runs
        return None
    finally:
        GlobalHydra.instance().clear()
    key = next((k for k in plain if k == missing.full_key or k.startswith(f"{missing.full_key}.")), None)
    node, last = missing.parent_node, missing.key
    where = missing.full_key.rpartition(".")[0]
    if key is None or last in node:
        return None
    known = [k for k in node if not (k.startswith("_") and k.endswith("_")) and k != "hydra"]
    if not known:  # seed.x: OmegaConf stands an empty group in for the value it went through
        return f"{key}: {where} holds no settings to override (it is a single value, or an empty group)"
    if "_target_" in node and key == missing.full_key:
        signature, _, name = signature_of(node._target_)
        if last in signature.parameters and last not in WIRED:
            return f"{key}: not in the config, but {name} takes it: add it with a '+', +{plain[key]}"
    return unknown_key(where, last, known).message()
