"""The settings of the code a config node calls, read from its signature.

Every config node with a ``_target_`` (model, data, optimizer, scheduler, trainer, each
callback and logger) is compared with the signature of the class or function it will
call: a key the target does not take is unknown (with the nearest real key suggested),
and a value that cannot have the parameter's annotated type (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, lists, ``Optional``/unions of these) is named with the type it
must have. The schema is the code itself: a new parameter is checked the day it is added.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from .across import SCHEDULE_LENGTH_KEYS
from .values import is_int, unknown_key


def targets(node, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(dotted key, node) of every node that names a ``_target_`` to call."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield prefix.rstrip("."), node
        for key in node:
            if not prefix and key == "hydra":
                continue
            if not (OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key)):  # (checked elsewhere)
                yield from targets(node[key], f"{prefix}{key}.")


# --------------------------------------------------------------------------- types


def fits(value, tp) -> bool | None:
    """Whether a plain config value can be of type ``tp``: True, False, or None when the
    annotation is not one a YAML value can be checked against (a class, a callable)."""
    if tp is typing.Any or tp is inspect.Parameter.empty or isinstance(tp, typing.TypeVar):
        return None
    if tp is None or tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        verdicts = [fits(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return is_int(value)
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
            verdicts = [fits(v, a) for v, a in zip(value, args)]
        else:
            verdicts = [fits(v, args[0]) for v in value] if args else []
        return False if False in verdicts else (None if None in verdicts else True)
    if container in (dict, Mapping):
        return isinstance(value, dict) or None
    return None


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(tp) -> str:
    """An annotation in words: ``Optional[int]`` -> 'an integer or null'."""
    if tp is None:
        tp = type(None)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        values = [v for lit in literals for v in typing.get_args(lit)]
        words = [f"one of {', '.join(map(repr, values))}"] if values else []
        words += [describe(a) for a in args if a not in literals]
        return " or ".join(dict.fromkeys(words))
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if tp in _NAMES:
        return _NAMES[tp]
    if (origin or tp) is tuple and args and args[-1] is not Ellipsis:
        each = dict.fromkeys(map(describe, args))
        return f"a list of {len(args)} values, " + (f"each {next(iter(each))}" if len(each) == 1 else ", ".join(each))
    if (origin or tp) in (list, tuple, Sequence):
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    if (origin or tp) in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def signature_of(target: str) -> tuple[inspect.Signature, dict, str]:

    obj = get_object(target)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation that does not resolve here: check names only
        hints = {}
    return inspect.signature(obj), hints, getattr(obj, "__qualname__", target)


WIRED = ("optimizer", "scheduler", "callbacks", "logger")  # arguments train.py builds from their own groups


def setting_problems(cfg: DictConfig, skip: set[str] = frozenset()) -> list[str]:
    """Keys the called code does not take, and values of the wrong type, for every node
    with a ``_target_``. ``skip``: keys already reported by a more specific rule."""
    # null in the config, a number when called: the schedule's length in optimiser steps
    # (handprop.gate.across.schedule_length fills it in from the run)
    filled_by_the_run = {f"scheduler.{key}" for key in SCHEDULE_LENGTH_KEYS}
    problems = []
    for where, node in targets(cfg):
        try:
            signature, hints, name = signature_of(node._target_)
        except (ImportError, ValueError, TypeError) as e:  # no such module or name; not a callable
            problems.append(f"{where}._target_={node._target_!r}: cannot be imported ({e})")
            continue
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        # the settings a user can give here: not *args/**kwargs, not what train.py passes in
        # (a partial's first argument -- the optimiser's parameters, the scheduler's
        # optimiser -- and what other config groups provide: model.optimizer, trainer.callbacks)
        known = [k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k not in WIRED]
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
                        unknown_key(where, key, [k for k in known if k in node] + [k for k in known if k not in node])
                    )
                continue
            if key not in hints:
                continue
            value = node[key]
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if isinstance(value, dict) and "_target_" in value:
                continue  # instantiated into an object, checked as its own node
            if value is None and full in filled_by_the_run:
                continue
            if fits(value, hints[key]) is False:
                problems.append(f"{full}={value!r}: must be {describe(hints[key])} (a setting of {name})")
    return problems
