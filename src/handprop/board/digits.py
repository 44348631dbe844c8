"""The digits the Backprop tab shows: a drawn canvas brought to MNIST's form, and the run's own.

A run keeps its digits in ``backprop/digits.pt`` (``callbacks.BackpropSnapshots``): some
of its validation digits, and one fixed training mini-batch. They are read with
``weights_only=True`` and checked for their shapes before use.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

from ..predict import ImageError, to_mnist
from .runs import BadRequest, load_once, run_file

MAX_SIDE = 1024  # a canvas sent larger than this a side is refused


def _levels(values, count: int, top: float, problem: str) -> Tensor:
    """``count`` finite numbers from 0 to ``top``, as float64; else a BadRequest saying ``problem``."""
    if not isinstance(values, list) or len(values) != count:
        raise BadRequest(f"{problem}; got {len(values) if isinstance(values, list) else type(values).__name__}")
    try:
        levels = torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise BadRequest(problem) from None
    if levels.dim() != 1 or not bool(torch.isfinite(levels).all()) or levels.min() < 0 or levels.max() > top:
        raise BadRequest(problem)
    return levels


def digit_from_request(body: dict, digits: dict | None) -> tuple[Tensor, int | None]:
    """The 28x28 digit (784,) in [0, 1] a request names, and its label if known: one of the
    run's validation digits (``digit``: its index); a digit already in MNIST's form
    (``pixels``: 784 levels in [0, 1], row by row); or a drawn canvas (``canvas``:
    {"width", "height", "grey": levels 0-255, row by row}), brought to MNIST's form by
    predict.py's own ``to_mnist``."""
    if body.get("digit") is not None:
        i = body["digit"]
        count = 0 if digits is None else len(digits["val_labels"])
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
            raise BadRequest(f"digit {i!r}: give the index of one of the run's {count} validation digits")
        return digits["val_images"][i].double().flatten() / 255, int(digits["val_labels"][i])
    if body.get("pixels") is not None:
        return _levels(body["pixels"], 784, 1.0, "pixels: give 784 numbers from 0 to 1, a 28x28 digit row by row"), None
    canvas = body.get("canvas")
    if not isinstance(canvas, dict):
        raise BadRequest("no digit given: draw one on the canvas, or pick one of the run's validation digits")
    w, h = canvas.get("width"), canvas.get("height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= MAX_SIDE for v in (w, h)):
        raise BadRequest(f"canvas {w!r}x{h!r}: width and height must be whole numbers from 8 to {MAX_SIDE}")
    grey = _levels(
        canvas.get("grey"), w * h, 255.0, f"canvas: {w}x{h} needs {w * h} grey levels from 0 to 255, row by row"
    )
    try:
        return to_mnist((grey / 255).float().view(h, w))[0].double().flatten(), None
    except ImageError as e:
        raise BadRequest(f"canvas: {e}; draw a digit first") from None


@functools.lru_cache(maxsize=16)
def _digits(path: str, version: tuple) -> dict:
    what = f"backprop/{Path(path).name}"
    try:
        digits = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, damaged, or a pickle asking for more than tensors
        raise BadRequest(f"{what}: cannot be read ({str(e).splitlines()[0][:200]}); train the run again") from None
    problem = _digits_problem(digits)
    if problem:
        raise BadRequest(f"{what} is not what handprop writes for the Backprop tab ({problem}); train the run again")
    return digits


def _digits_problem(digits) -> str | None:
    """What is wrong with a loaded digits.pt, or None."""
    if not isinstance(digits, dict):
        return "not a mapping"
    for kind in ("val", "batch"):
        images, labels = digits.get(f"{kind}_images"), digits.get(f"{kind}_labels")
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.shape[1:] != (28, 28):
            return f"{kind}_images: not uint8 digits of 28x28"
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (len(images),):
            return f"{kind}_labels: not one integer label per digit"
        if len(labels) == 0 or labels.min() < 0 or labels.max() > 9:
            return f"{kind}_labels: not digits from 0 to 9"
    lr = digits.get("learning_rate")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
        return "learning_rate: not a positive number"
    return None


def run_digits(directory: Path, run=None) -> dict:
    """The digits a run keeps for the tab in its ``backprop/`` (``callbacks.BackpropSnapshots``),
    read once per version of the file, and checked."""
    path = run_file(directory, "digits.pt", run)
    return load_once(_digits, path, f"run {run!r}: backprop/digits.pt cannot be read ({{}})")


def batch_of(digits: dict) -> tuple[Tensor, Tensor]:
    """The run's fixed training mini-batch, as pixels (N, 784) in [0, 1] and labels."""
    return digits["batch_images"].flatten(1).double() / 255, digits["batch_labels"]
