"""Read your own handwritten digits: ``python predict.py CHECKPOINT IMAGE [IMAGE ...]``.

Any PNG or JPEG, any size, dark ink on light paper or light on dark. Each image is
brought to the form of an MNIST digit first, the way MNIST itself was made: grey
levels, light strokes on black, the digit cropped to its bounding box, scaled so that its
longer side is 20 pixels, and placed in a 28x28 field with its centre of mass in the
middle. Prints the digit read and the output for every digit: its probability for a
network trained with cross-entropy (a softmax); for one trained with the quadratic cost (the
lesson's network), the output neuron's own activation, each in (0, 1), not summing to 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from .errors import HandpropError


class ImageError(HandpropError):
    """An image that cannot be read or holds no digit."""


# Bounds on the work one image may cause. A PNG of a few kilobytes can declare
# 20000 x 20000 pixels (a decompression bomb); a photo of a digit needs nowhere near that.
MAX_PIXELS = 50_000_000  # decoded at most (a 50-megapixel photo); a JPEG is first decoded at 1/2-1/8 scale
MAX_SIDE = 1024  # the decoded image is reduced to at most this many pixels a side before any arithmetic
MAX_BYTES = 200 * 2**20


def load_image(path: str | Path) -> Tensor:
    """A file -> grey levels (H, W) in [0, 1], as an image viewer shows it: turned by its
    orientation tag (phones store photos sideways with a tag), 16-bit grey at its full
    range, and a transparent image laid over a background that its ink stands out
    against. Bounded work per image (MAX_PIXELS, MAX_SIDE, MAX_BYTES): a larger one is
    refused, naming its size."""

    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file (a directory, a pipe or a device); give a PNG or JPEG file")
    if path.stat().st_size > MAX_BYTES:
        raise ImageError(
            f"{path}: {path.stat().st_size / 2**20:.0f} MB is too large for a picture of a digit "
            f"(at most {MAX_BYTES // 2**20} MB); scale it down first"
        )
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own bound below replaces Pillow's, after a JPEG's reduced decode
    try:
        with Image.open(path) as image:
            scale = MAX_SIDE / max(image.size)
            if scale < 1:  # a JPEG decodes at 1/2, 1/4 or 1/8 of its size, down to no less than this
                image.draft("L", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{path}: {image.width}x{image.height} pixels is too large to read (at most "
                    f"{MAX_PIXELS // 1_000_000} megapixels); scale it down first"
                )
            image = ImageOps.exif_transpose(image)
            size = _reduced_size(image.size)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16- or 32-bit grey
                grey = np.asarray(
                    image.resize(size, Image.Resampling.BOX) if size != image.size else image, dtype=np.float32
                )
                full = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
                return torch.from_numpy(grey / full)
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            image = image.convert("LA" if has_alpha else "L")
            if size != image.size:
                image = image.resize(size, Image.Resampling.BOX)
            pixels = np.asarray(image, dtype=np.float32) / 255
    except ImageError:
        raise
    except Exception as e:  # decoders raise many kinds on a malformed file (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"{path}: cannot be read as an image (PNG or JPEG expected): {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if pixels.ndim == 2:
        return torch.from_numpy(pixels)
    grey, alpha = pixels[..., 0], pixels[..., 1]
    if alpha.min() > 0.99:
        return torch.from_numpy(grey)
    # Transparent: the ink is what is opaque. Lay it over the background it contrasts with
    # (dark ink over white, light ink over black), as a viewer's page would show it.
    ink_level = float((grey * alpha).sum() / max(float(alpha.sum()), 1e-6))
    background = 1.0 if ink_level < 0.5 else 0.0
    return torch.from_numpy(grey * alpha + background * (1 - alpha))


def _reduced_size(size: tuple[int, int]) -> tuple[int, int]:
    """At most MAX_SIDE pixels a side, the proportions kept."""
    scale = min(1.0, MAX_SIDE / max(size))
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def to_mnist(grey: Tensor, ink_threshold: float = 0.2) -> Tensor:
    """Grey levels (H, W) in [0, 1] -> an MNIST-like digit (1, 28, 28) in [0, 1]."""
    border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = border.median()
    ink = (background - grey) if background > 0.5 else (grey - background)  # strokes light, paper 0
    ink = ink.clamp(min=0)
    if ink.max() < 0.1:
        raise ImageError("the image is blank: no strokes darker or lighter than its background")
    ink = ink / ink.max()
    rows, cols = (ink > ink_threshold).any(1).nonzero(), (ink > ink_threshold).any(0).nonzero()
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = digit.shape
    scale = 20 / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    digit = F.interpolate(digit[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    digit = digit.clamp(0, 1)
    # place it so that its centre of mass sits at the field's centre (14, 14)
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    mass = digit.sum()
    cy, cx = (digit.sum(1) * ys).sum() / mass, (digit.sum(0) * xs).sum() / mass
    top, left = round(14 - float(cy) - 0.5), round(14 - float(cx) - 0.5)
    top, left = min(max(top, 0), 28 - size[0]), min(max(left, 0), 28 - size[1])
    field = torch.zeros(28, 28)
    field[top : top + size[0], left : left + size[1]] = digit
    return field[None]


def image_error(path, e: ImageError) -> str:
    """The one line for an image that cannot be read, naming the file once."""
    return f"error: {e}" if str(e).startswith(str(path)) else f"error: {path}: {e}"


@torch.no_grad()
def predict(model, images: Tensor) -> Tensor:
    """Class probabilities (N, classes) for MNIST-like images (N, 1, 28, 28)."""
    model.eval()
    return model.probabilities(model(images.to(model.device)))


@torch.no_grad()
def outputs(model, images: Tensor) -> Tensor:
    """The network's outputs (N, classes) as its cost reads them, the numbers explain.py and
    the Backprop tab show: softmax probabilities for cross-entropy, the output neurons'
    activations themselves for the quadratic cost (a sigmoid's are each in (0, 1) and do not
    sum to 1)."""
    from .functional import COSTS  # noqa: PLC0415

    model.eval()
    return COSTS[model.hparams.loss].read(model(images.to(model.device)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python predict.py", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a handprop checkpoint, e.g. outputs/<run>/checkpoints/last.ckpt")
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    args = parser.parse_args(argv)

    # predict.py --help answers without loading Lightning
    from .checkpoint import model_from_checkpoint, read_checkpoint  # noqa: PLC0415

    try:
        # safe, ours, finite, consistent -- checked before anything is built, and read once
        model = model_from_checkpoint(read_checkpoint(args.checkpoint, option=None))
    except HandpropError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        try:
            image = to_mnist(load_image(path))
        except ImageError as e:
            print(image_error(path, e), file=sys.stderr)
            failed += 1
            continue
        p = outputs(model, image[None])[0]
        digit = int(p.argmax())
        read = f"{p[digit]:.1%}" if model.calibrated else f"output {p[digit]:.3f}"
        print(f"{path}: {digit} ({read})   " + "  ".join(f"{k}:{v:.3f}" for k, v in enumerate(p.tolist())))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
