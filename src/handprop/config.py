"""Every config value checked before any work: the key named, the allowed values said.

Three layers, all run by ``check_config`` before a single tensor is built:

1. **Settings of the code they configure.** Every config node with a ``_target_``
   (model, data, optimizer, scheduler, trainer, each callback and logger) is compared
   with the signature of the class or function it will call: a key the target does not
   take is unknown (with the nearest real key suggested), and a value that cannot have the
   parameter's annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
   lists, ``Optional``/unions of these) is named with the type it must have. The schema is
   the code itself: a new parameter is checked the day it is added.
2. **Ranges** (``RANGES``): sizes, learning rates, epochs, probabilities in [0, 1), ...,
   one line each with the allowed values and an example.
3. **Cross-key rules**: the global batch must divide among the processes, a full
   dataset needs its directory, label smoothing belongs to the cross-entropy cost.

A key that is not in the config at all (``model.hiden=3``) is refused by Hydra before
any of this runs; ``unknown_override_message`` gives that case the same kind of message
(the entry points ask it first).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import os
import pathlib
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import functional as HF
from .data import AUGMENTATIONS, DATASETS, LOADERS
from .errors import HandpropError
from .module import SCHEDULE_LENGTH_KEYS, decoupled_weight_decay
from .nn import INITS


class ConfigError(HandpropError):
    """The configuration asks for something impossible; the message names the key."""


# --------------------------------------------------------------------------- value rules


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v) -> bool:
    return _is_int(v) and v > 0


def _or_null(rule: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or rule(v)


def _limit_batches(v) -> bool:  # Lightning's limit_*_batches: a count, or a fraction of the epoch
    return v is None or (_is_int(v) and v >= 0) or (_is_number(v) and 0 <= v <= 1)


def _probability(v) -> bool:
    return _is_number(v) and 0 <= v < 1


_POSITIVE_INT = (_positive_int, "must be a positive integer")
_POSITIVE_INT_OR_NULL = (_or_null(_positive_int), "must be a positive integer")  # null: if the signature takes it

# (key pattern, rule, allowed values). Patterns are fnmatch-style over dotted keys; a key
# a config does not have is skipped. The first matching rule that fails names the key.
# A value a rule lets through is still checked against its parameter's type, so a rule
# that lets null through leaves it to the signature to say whether null is allowed.
RANGES: list[tuple[str, Callable[[object], bool], str]] = [
    (
        "seed",
        _or_null(lambda v: _is_int(v) and 0 <= v < 2**32),
        "must be an integer from 0 to 4294967295, or null for an unseeded run",
    ),
    ("model.dropout", _probability, "must be a probability in [0, 1)"),
    ("model.label_smoothing", _probability, "must be a probability in [0, 1)"),
    ("model.l2", lambda v: _is_number(v) and v >= 0, "must be a number >= 0 (Nielsen's lambda, e.g. 5.0; 0: none)"),
    ("model.input_size", *_POSITIVE_INT),
    ("model.num_classes", lambda v: _is_int(v) and v >= 2, "must be an integer >= 2"),
    ("optimizer.lr", lambda v: _is_number(v) and v > 0, "must be a positive number, e.g. optimizer.lr=0.001"),
    ("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "must be a number >= 0"),
    ("optimizer.momentum", _probability, "must be in [0, 1), e.g. optimizer.momentum=0.9"),
    ("optimizer.eps", lambda v: _is_number(v) and v > 0, "must be a small positive number, e.g. 1e-8"),
    ("scheduler.pct_start", lambda v: _is_number(v) and 0 < v < 1, "must be a fraction in (0, 1), e.g. 0.2"),
    ("scheduler.eta_min", lambda v: _is_number(v) and v >= 0, "must be a number >= 0"),
    ("scheduler.max_lr", lambda v: _is_number(v) and v > 0, "must be a positive number"),
    ("scheduler.T_max", *_POSITIVE_INT_OR_NULL),
    ("scheduler.total_steps", *_POSITIVE_INT_OR_NULL),
    ("data.batch_size", *_POSITIVE_INT),
    ("data.eval_batch_size", *_POSITIVE_INT),
    ("data.val_size", *_POSITIVE_INT),
    ("data.split_seed", _is_int, "must be an integer"),
    ("data.num_workers", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    ("data.augment.flip", lambda v: _is_number(v) and 0 <= v <= 1, "must be a probability in [0, 1] (0 turns it off)"),
    ("data.augment.*", lambda v: _is_number(v) and v >= 0, "must be a number >= 0 (0 turns it off)"),
    ("trainer.max_epochs", lambda v: v is None or (_is_int(v) and (v > 0 or v == -1)), "must be a positive integer"),
    (
        "trainer.max_steps",
        lambda v: _is_int(v) and (v > 0 or v == -1),
        "must be a positive integer, or -1 for no limit",
    ),
    ("trainer.num_nodes", *_POSITIVE_INT),
    (
        "trainer.devices",
        lambda v: (
            (_is_int(v) and (v > 0 or v == -1))
            or isinstance(v, str)
            or (isinstance(v, list) and all(_is_int(i) and i >= 0 for i in v))
        ),
        "must be a positive integer, -1 (all), 'auto', or a list of device indices",
    ),
    ("trainer.accumulate_grad_batches", *_POSITIVE_INT),
    ("trainer.log_every_n_steps", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    ("trainer.check_val_every_n_epoch", *_POSITIVE_INT_OR_NULL),
    (
        "trainer.gradient_clip_val",
        lambda v: v is None or (_is_number(v) and v >= 0),
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
    ("callbacks.*.every_n_*", *_POSITIVE_INT_OR_NULL),
    ("callbacks.*.*_every_n_epochs", *_POSITIVE_INT_OR_NULL),
    ("callbacks.*.threshold*", lambda v: _is_number(v) and v > 0, "must be a positive number"),
    ("callbacks.*.max_neurons", *_POSITIVE_INT),
    ("callbacks.*.max_mistakes", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    ("callbacks.*.landscape_points", lambda v: _is_int(v) and v >= 2, "must be an integer >= 2"),
    ("callbacks.*.landscape_samples", *_POSITIVE_INT),
    ("callbacks.*.landscape_span", lambda v: _is_number(v) and v > 0, "must be a positive number"),
    ("callbacks.*.save_top_k", lambda v: _is_int(v) and v >= -1, "must be an integer >= -1 (-1: keep all)"),
    ("callbacks.*.refresh_rate", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (0: no bar)"),
]


def _choices() -> dict[str, tuple]:

    return {
        "model.activation": HF.ACTIVATIONS,
        "model.output_activation": HF.ACTIVATIONS,
        "model.loss": tuple(HF.COSTS),
        "model.init": INITS,
        "model.backward": HF.BACKWARDS,
        "data.dataset": DATASETS,
        "data.loader": LOADERS,
        "trainer.accelerator": ("auto", "cpu", "gpu", *sorted(AcceleratorRegistry.available_accelerators() - {"cpu"})),
        "trainer.strategy": ("auto", *(s for s in StrategyRegistry.available_strategies() if "find_unused" not in s)),
    }


# --------------------------------------------------------------------------- walking a config


def _leaves(node, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, resolved plain value) of every value in a config, lists kept whole.
    Interpolated values (``max_lr: ${optimizer.lr}``) are skipped: they are checked, and
    named, where they are set; so is one that cannot be resolved here (``${hydra:...}``
    outside a Hydra run): it is Hydra's to fill in, not the user's to fix."""
    for key in node:
        if (not prefix and key == "hydra") or OmegaConf.is_interpolation(node, key):
            continue  # Hydra's own settings; values set elsewhere
        path = f"{prefix}{key}"
        try:
            value = node[key]
        except Exception:
            continue
        if isinstance(value, DictConfig):
            yield from _leaves(value, path + ".")
        elif isinstance(value, ListConfig):
            try:
                yield path, OmegaConf.to_container(value, resolve=True)
            except Exception:
                continue
        else:
            yield path, value


def _targets(node, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(dotted key, node) of every node that names a ``_target_`` to call."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield prefix.rstrip("."), node
        for key in node:
            if not prefix and key == "hydra":
                continue
            try:
                child = node[key]
            except Exception:
                continue
            yield from _targets(child, f"{prefix}{key}.")


def unknown_key_message(where: str, key: str, known: Sequence[str]) -> str:
    """``where.key`` is not one of ``known``: the message, with the nearest known key."""
    dotted = (lambda k: f"{where}.{k}") if where else (lambda k: k)
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"Did you mean {dotted(close[0])}? " if close else ""
    return f"{dotted(key)}: unknown key. {hint}{where or 'The config'} has: {', '.join(known)}"


# --------------------------------------------------------------------------- types from signatures


def _fits(value, tp) -> bool | None:
    """Whether a plain config value can be of type ``tp``: True, False, or None when the
    annotation is not one a YAML value can be checked against (a class, a callable)."""
    if tp is typing.Any or tp is inspect.Parameter.empty or isinstance(tp, typing.TypeVar):
        return None
    if tp is None or tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _is_int(value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (pathlib.Path, pathlib.PurePath, os.PathLike):
        return isinstance(value, str)
    container = origin or tp  # typing.Sequence[int] and list[int] have their class as origin
    if container in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            verdicts = [_fits(v, a) for v, a in zip(value, args)]
        else:
            verdicts = [_fits(v, args[0]) for v in value] if args else []
        return False if False in verdicts else (None if None in verdicts else True)
    if container in (dict, Mapping):
        return isinstance(value, dict) or None
    return None


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(tp) -> str:
    """An annotation in words: ``Optional[int]`` -> 'an integer or null'."""
    if tp is None:
        tp = type(None)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        values = [v for lit in literals for v in typing.get_args(lit)]
        words = [f"one of {', '.join(map(repr, values))}"] if values else []
        words += [_describe(a) for a in args if a not in literals]
        return " or ".join(dict.fromkeys(words))
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if tp in _NAMES:
        return _NAMES[tp]
    if (origin or tp) is tuple and args and args[-1] is not Ellipsis:
        each = dict.fromkeys(map(_describe, args))
        return f"a list of {len(args)} values, " + (f"each {next(iter(each))}" if len(each) == 1 else ", ".join(each))
    if (origin or tp) in (list, tuple, Sequence):
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    if (origin or tp) in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _signature_of(target: str) -> tuple[inspect.Signature, dict, str]:

    obj = get_object(target)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve here: check names only
        hints = {}
    return inspect.signature(obj), hints, getattr(obj, "__qualname__", target)


_WIRED = ("optimizer", "scheduler", "callbacks", "logger")  # arguments train.py builds from their own groups
# null in the config, a number when called: the schedule's length in optimiser steps
# (handprop.module.schedule_length fills it in from the run)
FILLED_BY_THE_RUN = tuple(f"scheduler.{key}" for key in SCHEDULE_LENGTH_KEYS)


def setting_problems(cfg: DictConfig, skip: set[str] = frozenset()) -> list[str]:
    """Keys the called code does not take, and values of the wrong type, for every node
    with a ``_target_``. ``skip``: keys already reported by a more specific rule."""
    problems = []
    for where, node in _targets(cfg):
        try:
            signature, hints, name = _signature_of(node._target_)
        except Exception as e:
            problems.append(f"{where}._target_={node._target_!r}: cannot be imported ({e})")
            continue
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        # the settings a user can give here: not *args/**kwargs, not what train.py passes in
        # (a partial's first argument -- the optimiser's parameters, the scheduler's
        # optimiser -- and what other config groups provide: model.optimizer, trainer.callbacks)
        known = [k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k not in _WIRED]
        if node.get("_partial_") and known and known[0] not in node:
            known = known[1:]
        for key in node:
            full = f"{where}.{key}"
            if (key.startswith("_") and key.endswith("_")) or full in skip:
                continue  # Hydra's own keys (_target_, _partial_, ...)
            if OmegaConf.is_interpolation(node, key):
                continue  # checked where it is set
            if key not in params:
                if not takes_any:
                    problems.append(
                        unknown_key_message(
                            where, key, [k for k in known if k in node] + [k for k in known if k not in node]
                        )
                    )
                continue
            if key not in hints:
                continue
            try:
                value = node[key]
                value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            except Exception:
                continue
            if isinstance(value, dict) and "_target_" in value:
                continue  # instantiated into an object, checked as its own node
            if value is None and full in FILLED_BY_THE_RUN:
                continue
            if _fits(value, hints[key]) is False:
                problems.append(f"{full}={value!r}: must be {_describe(hints[key])} (a setting of {name})")
    return problems


# --------------------------------------------------------------------------- the whole check


def config_problems(cfg: DictConfig) -> list[str]:
    """Every user-facing value that cannot work, one line each, naming the key and the fix."""
    problems: dict[str, str] = {}  # key -> its first problem

    def report(key: str, message: str) -> None:
        problems.setdefault(key, message)

    values = dict(_leaves(cfg))
    for key, allowed in _choices().items():
        if key in values:
            if values[key] not in allowed:
                report(key, f"{key}={values[key]!r}: must be one of {', '.join(map(str, allowed))}")
    if "model.hidden" in values:
        hidden = values["model.hidden"]
        if not (isinstance(hidden, list) and all(_positive_int(h) for h in hidden)):
            report(
                "model.hidden",
                f"model.hidden={hidden!r}: must be a list of positive layer sizes, "
                "e.g. model.hidden=[512,256] (or [] for none)",
            )
    for key, value in values.items():
        if key in problems:
            continue
        for pattern, rule, allowed in RANGES:
            if fnmatch.fnmatchcase(key, pattern):
                if not rule(value):
                    report(key, f"{key}={value!r}: {allowed}")
                break

    if cfg.get("ckpt_path") and cfg.get("init_from"):
        report(
            "init_from",
            f"init_from={cfg.init_from} and ckpt_path={cfg.ckpt_path}: choose one -- ckpt_path resumes "
            "a run (its optimiser, schedule and counters), init_from starts a new run from a checkpoint's weights",
        )
    m = cfg.get("model")
    # functional.check_cost's rule: smoothing softens the softmax cost's target only
    if (
        m is not None
        and m.get("loss") != "cross_entropy"
        and m.get("label_smoothing")
        and not {"model.loss", "model.label_smoothing"} & set(problems)
    ):
        report("model.label_smoothing", "model.label_smoothing: applies to model.loss=cross_entropy only; set it to 0")
    if values.get("model.l2") and "model.l2" not in problems:
        o = cfg.get("optimizer") or {}
        try:
            decoupled = decoupled_weight_decay(get_object(o.get("_target_", "")), o)
        except Exception:
            decoupled = False
        if decoupled:
            report(
                "model.l2",
                f"model.l2={values['model.l2']}: is an L2 term of the cost, which {o._target_}'s decoupled "
                "weight decay is not: use optimizer=sgd, or model.l2=0 and optimizer.weight_decay",
            )
        elif values.get("optimizer.weight_decay"):
            report(
                "model.l2",
                f"model.l2={values['model.l2']} and optimizer.weight_decay={values['optimizer.weight_decay']}: "
                "both decay the weights; set one of them to 0",
            )
    d = cfg.get("data")
    if d is not None:
        augment = d.get("augment") or {}
        for key in augment:
            if key not in AUGMENTATIONS:
                report(f"data.augment.{key}", unknown_key_message("data.augment", key, AUGMENTATIONS))
        if d.get("dataset") in DATASETS[1:] and not d.get("download"):
            data_dir = d.get("data_dir")
            if data_dir is None or not Path(data_dir).is_dir():
                report(
                    "data.data_dir",
                    f"data.data_dir={data_dir!r}: directory does not exist; point it at the "
                    "dataset or set data.download=true",
                )
    t = cfg.get("trainer")
    if t is not None:
        devices, nodes, batch = (
            values.get("trainer.devices"),
            values.get("trainer.num_nodes", 1),
            values.get("data.batch_size"),
        )
        # data.batch_size is the global batch: every process takes an equal share. Checked
        # here, before any process is launched, when the number of processes is known.
        if (
            _positive_int(devices)
            and _positive_int(nodes)
            and _positive_int(batch)
            and "data.batch_size" not in problems
        ):
            world = devices * nodes
            if batch % world:
                report(
                    "data.batch_size",
                    f"data.batch_size={batch}: is the global batch and must divide evenly among the "
                    f"{world} processes (trainer.devices={devices} x trainer.num_nodes={nodes}), "
                    f"e.g. data.batch_size={max(world, batch // world * world)}",
                )
    for line in setting_problems(cfg, skip=set(problems)):
        report(line.split("=")[0].split(":")[0], line)
    order = list(values)  # report in the config's own order
    return [problems[k] for k in sorted(problems, key=lambda k: order.index(k) if k in order else len(order))]


def check_config(cfg: DictConfig) -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("bad config:\n  " + "\n  ".join(problems))


def exit_on_unknown_override(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """For the entry points, before Hydra starts: a key that is not in the config
    (``model.hiden=3``) ends the program with the message, exit status 2."""

    problem = unknown_override_message(config_dir, config_name, argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


# --------------------------------------------------------------------------- keys not in the config


def unknown_override_message(config_dir: str | Path, config_name: str, argv: list[str]) -> str | None:
    """Hydra refuses ``model.hiden=3`` (no such key) with "Could not override ... To append
    to your config use +model.hiden=3" -- advice that only moves the failure. This composes
    the config the way the entry point will and, for that one case, returns a message naming
    the key, the nearest real key and the keys that exist there. None when the overrides
    compose (or fail for any other reason, which Hydra reports well itself). ``argv``: the
    command line after the script; with flags other than ``-m`` it is left to Hydra."""

    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        return None  # --cfg, --help, -cn ...: another config or no run

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None  # a syntax error: Hydra's message shows where
    plain = []
    for override in parsed:
        if override.is_sweep_override():  # -m a=1,2: one value is enough to know the key
            try:
                plain.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
            except Exception:
                continue  # e.g. an Optuna interval(): the sweeper checks it
        else:
            plain.append(override.input_line)

    def composed(with_overrides: list[str]):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
                return compose(config_name, with_overrides)
        finally:
            GlobalHydra.instance().clear()

    try:
        composed(plain)
        return None
    except ConfigCompositionException as e:
        found = re.match(r"Could not override '([^']+)'", str(e))
        if not found:
            return None
        key = found.group(1)
    except Exception:
        return None
    try:
        cfg = composed([o for o in plain if o.split("=")[0] != key])
    except Exception:
        return None
    where, _, last = key.rpartition(".")
    while where and OmegaConf.select(cfg, where) is None:  # modle.hidden: 'modle' is the unknown part
        where, _, last = where.rpartition(".")
    node = OmegaConf.select(cfg, where) if where else cfg
    if not isinstance(node, DictConfig):
        return f"{key}: {where} is a value, not a group of settings"
    known = [k for k in node if not (k.startswith("_") and k.endswith("_")) and k != "hydra"]
    if "_target_" in node and last == key.rpartition(".")[2]:
        try:
            signature, _, name = _signature_of(node._target_)
        except Exception:
            signature = None
        if signature is not None and last in signature.parameters and last not in _WIRED:
            value = next(o for o in plain if o.split("=")[0] == key).split("=", 1)[1]
            return f"{key}: not in the config, but {name} takes it: add it with a '+', +{key}={value}"
    return unknown_key_message(where, last, known)
