"""Each value on its own: its range and its choices, one wording, ``key=value: what is allowed``.

Two tables: ``RANGES``, the settings of other libraries' code (PyTorch's optimisers and
schedules, Lightning's trainer and callbacks) by config key, and ``own_rules``, the settings of
handprop's own classes by class and parameter, wherever a config puts them. The types
come from the signatures (``signatures.py``); the rules that join keys from ``across.py``.
Constructors do not check again: each rule runs once, here.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import math
from collections.abc import Callable, Iterable, Iterator

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

# --------------------------------------------------------------------------- kinds of value


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v) -> bool:
    return is_int(v) and v > 0


def probability(v) -> bool:
    """In [0, 1): a dropout rate, label smoothing, momentum."""
    return is_number(v) and 0 <= v < 1


POSITIVE_INT, POSITIVE_INT_OR_NULL = "must be a positive integer", "must be a positive integer, or null"
PROBABILITY = "must be a probability in [0, 1)"


def unknown_key(where: str, key: str, known: Iterable[str]) -> str:
    """``where.key`` is not one of ``known``: the message, with the nearest known key."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    dotted = f"{where}." if where else ""
    hint = f"Did you mean {dotted}{close[0]}? " if close else ""
    return f"{dotted}{key}: unknown key. {hint}{where or 'The config'} has: {', '.join(known)}"


def one_of(choices: Iterable) -> Callable[[object], str | None]:
    """A rule: the value is one of ``choices`` (None), or what is allowed, the nearest suggested."""
    choices = [str(c) for c in choices]

    def check(value) -> str | None:
        if value in choices:
            return None
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        return f"must be one of {', '.join(choices)}" + (f" (did you mean {close[0]}?)" if close else "")

    return check


def rule(ok: Callable[[object], bool], allowed: str) -> Callable[[object], str | None]:
    return lambda value: None if ok(value) else allowed  # (one_of's answer, from a predicate)


# --------------------------------------------------------------------------- other libraries' settings


def _or_null(rule: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or rule(v)


def _limit_batches(v) -> bool:  # Lightning's limit_*_batches: a count, or a fraction of the epoch
    return v is None or (is_int(v) and v >= 0) or (is_number(v) and 0 <= v <= 1)


_POSITIVE_INT, _POSITIVE_INT_OR_NULL = (positive_int, POSITIVE_INT), (_or_null(positive_int), POSITIVE_INT)

# (key pattern, rule, allowed values). Patterns are fnmatch-style over dotted keys; a key a config
# does not have is skipped. The first matching rule that fails names the key. A value a rule lets
# through is still checked against its parameter's type (a rule letting null through leaves it to
# the signature to say whether null is allowed).
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


# --------------------------------------------------------------------------- handprop's own settings


def _int_at_least(n: int) -> Callable[[object], bool]:
    return lambda v: is_int(v) and v >= n


def _positive_number(v) -> bool:
    return is_number(v) and v > 0


def _sdlm_schedule(schedule) -> bool:
    pairs = [tuple(pair) for pair in (schedule or [])]
    return all(len(p) == 2 and is_int(p[0]) and p[0] >= 1 and is_number(p[1]) and p[1] > 0 for p in pairs) and [
        p[0] for p in pairs
    ] == sorted({p[0] for p in pairs})


@functools.cache
def own_rules() -> dict[type, dict[str, Callable[[object], str | None]]]:
    """The settings of handprop's classes: class -> parameter -> check(value) -> what is
    allowed, or None. (Imported when a config is checked: torch loads for a run, not for
    ``--help``.)"""
    from .. import callbacks as C  # noqa: PLC0415
    from ..data import DigitsDataModule  # noqa: PLC0415
    from ..data.datasets import DATASETS  # noqa: PLC0415
    from ..data.loader import LOADERS  # noqa: PLC0415
    from ..functional import ACTIVATIONS, BACKWARDS, COSTS  # noqa: PLC0415
    from ..module import DigitClassifier  # noqa: PLC0415
    from ..nn import INITS  # noqa: PLC0415
    from ..optim import SDLM  # noqa: PLC0415

    positive, positive_or_null = (
        rule(positive_int, POSITIVE_INT),
        rule(lambda v: v is None or positive_int(v), POSITIVE_INT_OR_NULL),
    )
    at_least_2 = rule(_int_at_least(2), "must be an integer >= 2")
    positive_number = rule(_positive_number, "must be a positive number")
    return {
        DigitClassifier: {
            "hidden": rule(
                lambda v: isinstance(v, list) and all(positive_int(h) for h in v),
                "must be a list of positive layer sizes, e.g. model.hidden=[512,256] (or [] for none)",
            ),
            "activation": one_of(ACTIVATIONS),
            "output_activation": one_of(ACTIVATIONS),
            "loss": one_of(COSTS),
            "label_smoothing": rule(probability, PROBABILITY),
            "dropout": rule(probability, PROBABILITY),
            "init": one_of(INITS),
            "backward": one_of(BACKWARDS),
            "input_size": positive,
            "num_classes": at_least_2,
            "normalize": rule(
                lambda v: v in (True, False, "lecun"),
                "must be true (standardise), false (raw [0, 1] pixels) or lecun (background -0.1, ink 1.175)",
            ),
            "l2": rule(
                lambda v: is_number(v) and v >= 0, "must be a number >= 0 (Nielsen's lambda, e.g. 5.0; 0: none)"
            ),
            "chunk": positive_or_null,
            "gradient_clip_val": rule(
                lambda v: v is None or (is_number(v) and v >= 0),
                "must be a number >= 0 (e.g. 1.0), or null for no clipping",
            ),
            "gradient_clip_algorithm": rule(
                lambda v: v in ("norm", "value"), "must be norm (the whole gradient's length) or value (each element)"
            ),
        },
        DigitsDataModule: {
            "dataset": one_of(DATASETS),
            "loader": one_of(LOADERS),
            "batch_size": positive,
            "eval_batch_size": positive,
            "val_size": positive_or_null,
            "split_seed": rule(is_int, "must be an integer"),
            "num_workers": rule(_int_at_least(0), "must be an integer >= 0"),
        },
        SDLM: {
            "lr": rule(_positive_number, "must be a positive number, e.g. 0.0005 (LeCun's first η)"),
            "mu": rule(_positive_number, "must be a positive number, e.g. 0.02 (LeCun's μ)"),
            "samples": positive,
            "schedule": rule(
                _sdlm_schedule,
                "must be [first pass, lr] pairs with passes from 1 in increasing order and positive rates, "
                "e.g. [[1, 0.0005], [3, 0.0002]], or null",
            ),
        },
        C.GradientAudit: {
            "every_n_steps": positive,
            "threshold": positive_number,
            "threshold_half_precision": positive_number,
        },
        C.NumericsGuard: {"every_n_steps": positive},
        C.ReplicaCheck: {"every_n_epochs": positive_or_null},
        C.TrainingScalars: {"every_n_steps": positive_or_null},
        C.BackpropSnapshots: {"budget_mb": positive_number, "max_digits": positive},
        C.TensorBoardPictures: {
            "every_n_epochs": positive,
            "histograms_every_n_epochs": positive,
            "max_neurons": positive,
            "descent_samples": positive,
            "max_mistakes": rule(_int_at_least(0), "must be an integer >= 0"),
            "descent_points": at_least_2,
            "descent_snapshots": at_least_2,
        },
        C.EarlyStopping: {
            "patience": positive_or_null,
            "min_delta": rule(lambda v: is_number(v) and v >= 0, "must be a number >= 0"),
            "mode": one_of(("min", "max")),
        },
        C.InterruptCheckpoint: {"filename": rule(bool, "must be a file name, e.g. interrupted")},
    }


def own_problems(rules: dict, settings: dict, prefix: str = "") -> list[str]:
    """``settings`` (name -> value) against a class's own ``rules``, one line per refusal."""
    return [
        f"{prefix}{name}={settings[name]!r}: {allowed}"
        for name, check in rules.items()
        if name in settings and (allowed := check(settings[name]))
    ]


def _own_rules_of(target: str) -> dict:
    try:
        cls = get_object(target)
    except (ImportError, ValueError, AttributeError):
        return {}  # named by the signature check
    rules = own_rules()
    return next((rules[c] for c in getattr(cls, "__mro__", ()) if c in rules), {})


def _choices() -> dict[str, tuple]:
    from lightning.pytorch.accelerators import AcceleratorRegistry  # noqa: PLC0415 -- Lightning loads only for a check
    from lightning.pytorch.strategies import StrategyRegistry  # noqa: PLC0415 -- Lightning loads only for a check

    return {
        "trainer.accelerator": ("auto", "cpu", "gpu", *sorted(AcceleratorRegistry.available_accelerators() - {"cpu"})),
        "trainer.strategy": ("auto", *(s for s in StrategyRegistry.available_strategies() if "find_unused" not in s)),
    }


def leaves(node, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, resolved plain value) of every value in a config, lists kept whole.
    Interpolated values (``max_lr: ${optimizer.lr}``) are skipped: they are checked, and
    named, where they are set; so is one that cannot be resolved here (``${hydra:...}``
    outside a Hydra run): it is Hydra's to fill in, not the user's to fix. A value the
    config leaves to be given (``???``) is skipped too (``value_problems`` names it)."""
    for key in node:
        if (not prefix and key == "hydra") or OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue  # Hydra's own settings; values set elsewhere; values to be given
        path, value = f"{prefix}{key}", node[key]
        if isinstance(value, DictConfig):
            yield from leaves(value, path + ".")
        elif isinstance(value, ListConfig):
            try:
                yield path, OmegaConf.to_container(value, resolve=True)
            except InterpolationResolutionError:  # an item set elsewhere: checked there
                continue
        else:
            yield path, value


def _missing(node, prefix: str = "") -> Iterator[str]:
    """The dotted keys of the values a config leaves to be given (``???``), resolving nothing."""
    for key in node:
        if (not prefix and key == "hydra") or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif isinstance(node[key], DictConfig):
            yield from _missing(node[key], f"{prefix}{key}.")


def value_problems(cfg: DictConfig, values: dict) -> dict[str, str]:
    """key -> its first problem, for every value that is wrong on its own: a choice of
    Lightning's registries, a range of ``RANGES``, a type of a signature, a rule of ``own_rules``."""
    from .signatures import setting_problems, targets  # noqa: PLC0415

    problems: dict[str, str] = {}

    def report(line: str) -> None:
        problems.setdefault(line.split("=")[0].split(":")[0], line)

    for key in _missing(cfg):
        example = "=outputs/<run>/checkpoints/last.ckpt" if key == "ckpt_path" else "=VALUE"
        report(f"{key}: is required (the config leaves it ???): give it, e.g. {key}{example}")
    for key, allowed in _choices().items():
        if key in values and values[key] not in allowed:
            report(f"{key}={values[key]!r}: must be one of {', '.join(map(str, allowed))}")
    for key, value in values.items():
        for pattern, ok, allowed in RANGES:
            if fnmatch.fnmatchcase(key, pattern):
                if not ok(value):
                    report(f"{key}={value!r}: {allowed}")
                break
    for line in setting_problems(cfg, skip=set(problems)):
        report(line)
    for where, node in targets(cfg):
        settings = {k.removeprefix(f"{where}."): v for k, v in values.items() if k.startswith(f"{where}.")}
        settings = {name: v for name, v in settings.items() if f"{where}.{name}" not in problems}  # (not refused yet)
        for line in own_problems(_own_rules_of(str(node._target_)), settings, f"{where}."):
            report(line)
    return problems
