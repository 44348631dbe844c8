"""A key that is not in the config at all (``model.hiden=3``), named with the nearest real key.

Hydra refuses such an override while it composes the config, before the gate or any
callback runs, with advice that only moves the failure ("Could not override
'model.hiden'. To append to your config use +model.hiden=3"). ``run_main`` runs an entry
point's ``@hydra.main`` function and, for that one case (OmegaConf's missing-key error
under Hydra's), says instead which key, the nearest real key and the keys that exist
there; every other Hydra error reads as Hydra prints it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from hydra.errors import CompactHydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ..rundir import override_parser
from .signatures import WIRED, signature_of
from .values import unknown_key


def run_main(main: Callable[[], object], argv: list[str]) -> None:
    """``main()``, a ``@hydra.main`` function, with a key not in the config ending the
    program with its message (exit status 2) and any other error of Hydra's own in Hydra's
    words (exit status 1). The config is composed once, by Hydra."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors to its caller instead of printing them
    try:
        main()
    except CompactHydraException as e:  # (any other exception is a bug: its traceback stays)
        problem = unknown_key_message(e, argv)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        cause = f"\n{e.__cause__}" if isinstance(e.__cause__, OmegaConfBaseException) else ""
        print(f"{e}{cause}", file=sys.stderr)
        sys.exit(1)


def unknown_key_message(error: Exception, argv: list[str]) -> str | None:
    """The message for Hydra's composition ``error`` when an override of ``argv`` (the
    command line's, ``-m`` allowed) names a key that is not in the config; None for any
    other error (a wrong type, a missing option: Hydra's message says it well)."""
    missing = error.__cause__  # OmegaConf's own error, naming the missing key and where it was looked for
    if not isinstance(missing, (ConfigKeyError, ConfigAttributeError)) or not isinstance(
        missing.parent_node, DictConfig
    ):
        return None
    plain = typed_overrides(argv)
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
    return unknown_key(where, last, known)


def typed_overrides(argv: list[str]) -> dict[str, str]:
    """key -> the override as typed; -m a=1,2: one value is enough to know the key."""
    try:
        parsed = override_parser().parse_overrides([a for a in argv if not a.startswith("-")])
    except OverrideParseException:
        return {}
    plain = {}
    for override in parsed:
        if not override.is_sweep_override():
            plain[override.key_or_group] = override.input_line
        elif not override.is_interval_sweep():  # (an Optuna interval() has no value to take: the sweeper checks it)
            plain[override.key_or_group] = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
    return plain
