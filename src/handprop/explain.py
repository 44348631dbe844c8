"""What your own digit asks of every weight: ``python explain.py CHECKPOINT IMAGE [--label 7]``.

The image is read the way predict.py reads it (any PNG or JPEG, brought to the form of
an MNIST digit), and one backpropagation sweep through the trained network is drawn
(``pictures.backprop_figure``): what the network outputs against what the cost wants
for the digit ``--label`` (without it: the digit the network reads), the nudge every
output neuron wants, those nudges flowing back through the hidden layers, the change the
digit asks of the first layer's weights, and the same changes averaged over a mini-batch
of the embedded sample's training digits -- the step gradient descent would take there.
Writes ``IMAGE_backprop.png`` next to the image, or ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import HandpropError
from .predict import ImageError, image_error, load_image, predict, to_mnist

BATCH = 128  # the mini-batch of sample digits the step is averaged over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python explain.py", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a handprop checkpoint, e.g. outputs/<run>/checkpoints/last.ckpt")
    parser.add_argument("image", help="a PNG or JPEG file of one handwritten digit")
    parser.add_argument("--label", type=int, choices=range(10), help="the digit it is (default: the one read)")
    parser.add_argument("--out", help="where to write the picture (default: IMAGE_backprop.png next to IMAGE)")
    args = parser.parse_args(argv)

    # explain.py --help answers without loading Lightning or matplotlib
    import torch  # noqa: PLC0415

    from .checkpoint import model_from_checkpoint, read_checkpoint  # noqa: PLC0415
    from .data import load_split, seeded_digits  # noqa: PLC0415
    from .pictures import backprop_figure, nudges_of  # noqa: PLC0415

    try:
        model = model_from_checkpoint(read_checkpoint(args.checkpoint, option=None))
        image = to_mnist(load_image(args.image))
    except ImageError as e:
        print(image_error(args.image, e), file=sys.stderr)
        return 2
    except HandpropError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + "_backprop.png")
    read = int(predict(model, image[None])[0].argmax())
    label = read if args.label is None else args.label
    model.eval()
    one = nudges_of(model, image[None].to(model.device), torch.tensor([label], device=model.device))
    pixels, labels = seeded_digits(*load_split("sample", "train"), BATCH)
    batch = nudges_of(model, pixels.to(model.device), labels.to(model.device))
    given = f"label {label}" if args.label is not None else f"label {label}, the digit read"
    figure = backprop_figure(image[0], label, one, batch, BATCH, f"{Path(args.image).name}, {given}", model.calibrated)
    try:
        figure.savefig(out)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"{args.image}: read as {read}; the backward pass for label {label} drawn in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
