"""How handprop's own constructors refuse a setting: one wording, ``name=value: what is allowed``.

Every value is checked once, by the constructor that takes it (the model checks
``dropout``, the data module ``batch_size``, the picture callback ``max_neurons``). The
error is a ``SettingError``, a ``ValueError`` that knows which setting it is about, so
that the config layer can name the config key the user typed: ``dropout=1.5: ...`` raised
by the model reads ``model.dropout=1.5: ...`` on the command line. A message that names
another setting of the same constructor writes it as ``{prefix}download``, filled with the
same prefix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

_NO_VALUE = object()


class SettingError(ValueError):
    """One setting of a constructor is refused; ``allowed`` says what would work."""

    def __init__(self, name: str, allowed: str, value=_NO_VALUE):
        self.name, self.allowed, self.value = name, allowed, value
        super().__init__(self.message())

    def message(self, prefix: str = "") -> str:
        """The message with every setting it names prefixed, e.g. by ``"model."``."""
        shown = "" if self.value is _NO_VALUE else f"={self.value!r}"
        return f"{prefix}{self.name}{shown}: {self.allowed.replace('{prefix}', prefix)}"


def require(ok: bool, name: str, value, allowed: str) -> None:
    """Refuse ``value`` of setting ``name`` unless ``ok``: ``allowed`` says what is."""
    if not ok:
        raise SettingError(name, allowed, value)


def check_choice(name: str, value, choices: Iterable) -> None:
    """``value`` must be one of ``choices`` (a registry's names); the nearest is suggested."""
    choices = [str(c) for c in choices]
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SettingError(name, f"must be one of {', '.join(choices)}{hint}", value)


def unknown_key(where: str, key: str, known: Iterable[str]) -> SettingError:
    """``where.key`` is not one of ``known``: the error, with the nearest known key."""
    known = list(known)
    dotted = f"{{prefix}}{where}." if where else "{prefix}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"Did you mean {dotted}{close[0]}? " if close else ""
    has = f"{{prefix}}{where}" if where else "The config"
    return SettingError(f"{where}.{key}" if where else key, f"unknown key. {hint}{has} has: {', '.join(known)}")


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


POSITIVE_INT = "must be a positive integer"
POSITIVE_INT_OR_NULL = "must be a positive integer, or null"
PROBABILITY = "must be a probability in [0, 1)"


# --------------------------------------------------------------------------- the model's own settings


MODEL_SETTINGS = {  # DigitClassifier's own: setting -> (rule, what is allowed)
    "hidden": (
        lambda v: isinstance(v, list) and all(positive_int(h) for h in v),
        "must be a list of positive layer sizes, e.g. {prefix}hidden=[512,256] (or [] for none)",
    ),
    "input_size": (positive_int, POSITIVE_INT),
    "num_classes": (lambda v: is_int(v) and v >= 2, "must be an integer >= 2"),
    "l2": (lambda v: is_number(v) and v >= 0, "must be a number >= 0 (Nielsen's lambda, e.g. 5.0; 0: none)"),
    "chunk": (lambda v: v is None or positive_int(v), POSITIVE_INT_OR_NULL),
    "gradient_clip_val": (
        lambda v: v is None or (is_number(v) and v >= 0),
        "must be a number >= 0 (e.g. 1.0), or null for no clipping",
    ),
    "gradient_clip_algorithm": (
        lambda v: v in ("norm", "value"),
        "must be norm (the whole gradient's length) or value (each element)",
    ),
    "normalize": (
        lambda v: v in (True, False, "lecun"),
        "must be true (standardise), false (raw [0, 1] pixels) or lecun (background -0.1, ink 1.175)",
    ),
}


def check_model_settings(settings) -> None:
    """DigitClassifier's settings (its hyper-parameters), each on its own: a SettingError
    names the first refused (the config check builds the model on the meta device, and
    names it by its key). The layers check their own (``nn.py``)."""
    from .functional import check_cost  # noqa: PLC0415 -- torch loads only when a model is built

    for name, (rule, allowed) in MODEL_SETTINGS.items():
        require(rule(settings[name]), name, settings[name], allowed)
    check_cost(settings["loss"], settings["label_smoothing"])
