"""Read your own handwritten digits: ``python predict.py CHECKPOINT IMAGE [IMAGE ...]``.

Any PNG or JPEG, any size, dark ink on light paper or light on dark. Each image is
brought to the form of an MNIST digit first, the way MNIST itself was made: grey
levels, light strokes on black, the digit cropped to its bounding box, scaled so that its
longer side is 20 pixels, and placed in a 28x28 field with its centre of mass in the
middle. Prints the digit read and the probability of every class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


class ImageError(ValueError):
    """An image that cannot be read or holds no digit."""


def load_image(path: str | Path) -> Tensor:
    """A file -> grey levels (H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            return torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(grey.height, grey.width).float() / 255
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: cannot be read as an image (PNG or JPEG expected): {e}") from None


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


@torch.no_grad()
def predict(model, images: Tensor) -> Tensor:
    """Class probabilities (N, classes) for MNIST-like images (N, 1, 28, 28)."""
    model.eval()
    return model.probabilities(model(images.to(model.device)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python predict.py", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a handprop checkpoint, e.g. outputs/<run>/checkpoints/last.ckpt")
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    args = parser.parse_args(argv)

    from .module import DigitClassifier
    from .train import UserError, read_checkpoint

    try:
        if not Path(args.checkpoint).is_file():
            raise UserError(f"{args.checkpoint}: no such checkpoint file")
        read_checkpoint(args.checkpoint)
        model = DigitClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        try:
            image = to_mnist(load_image(path))
        except ImageError as e:
            print(f"error: {path}: {e}" if not str(e).startswith(str(path)) else f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        p = predict(model, image[None])[0]
        digit = int(p.argmax())
        print(f"{path}: {digit} ({p[digit]:.1%})   " + "  ".join(f"{k}:{v:.3f}" for k, v in enumerate(p.tolist())))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
