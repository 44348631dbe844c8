"""What your own digit asks of every weight: ``python explain.py CHECKPOINT IMAGE [--label 7]``.

The image is read the way predict.py reads it (any PNG or JPEG, brought to the form of
an MNIST digit), and one backpropagation sweep through the trained network is drawn
(``pictures.backprop_figure``): what the network outputs against what the cost wants
for the digit ``--label`` (without it: the digit the network reads), the nudge every
output neuron wants, those nudges flowing back through the hidden layers, the change the
digit asks of the first layer's weights, and the same changes averaged over a mini-batch
that contains the digit -- the step gradient descent would take there. The mini-batch is
the run's size: the digit with the run's own fixed training mini-batch
(``backprop/digits.pt`` in its directory); for a checkpoint without one, the digit with
training digits of the embedded sample, as many as the run's ``data.batch_size``.
Writes ``IMAGE_backprop.png`` next to the image, or ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import HandpropError
from .predict import ImageError, image_error, load_image, predict, to_mnist

BATCH = 128  # the mini-batch, when the checkpoint's run says nothing of its own


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
    pixels, labels = run_batch(Path(args.checkpoint))
    pixels, labels = torch.cat([image[None], pixels[1:]]), torch.cat([torch.tensor([label]), labels[1:]])
    batch = nudges_of(model, pixels.to(model.device), labels.to(model.device))
    given = f"label {label}" if args.label is not None else f"label {label}, the digit read"
    title = f"{Path(args.image).name}, {given}"
    activations = model.net.activations
    figure = backprop_figure(image[0], label, one, batch, len(labels), title, model.calibrated, activations=activations)
    try:
        figure.savefig(out)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    wanted = f"label {label}" if args.label is not None else f"label {label} (the digit read; --label to choose)"
    print(f"{args.image}: read as {read}; the backward pass for {wanted} drawn in {out}")
    return 0


def run_batch(checkpoint: Path):
    """A mini-batch of the checkpoint's run, its size the run's (images (N, 1, 28, 28) in
    [0, 1], labels): its own fixed one if it kept one, else training digits of the embedded
    sample, as many as its .hydra/config.yaml's data.batch_size (BATCH without one)."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    from .board.digits import run_digits  # noqa: PLC0415
    from .board.runs import BadRequest  # noqa: PLC0415
    from .data import load_split, seeded_digits  # noqa: PLC0415

    run = checkpoint.resolve().parent.parent  # <run>/checkpoints/x.ckpt or <run>/backprop/epochNNNN.pt
    config = run / ".hydra" / "config.yaml"
    try:  # the run's own fixed mini-batch, read and checked as the Backprop tab reads it
        digits = run_digits((run / "backprop").resolve(), run.name)
        return digits["batch_images"][:, None].float() / 255, digits["batch_labels"]
    except BadRequest:  # an older run's checkpoint, or one without its run directory
        pass
    size = (
        int(OmegaConf.select(OmegaConf.load(config), "data.batch_size", default=BATCH)) if config.is_file() else BATCH
    )
    return seeded_digits(*load_split("sample", "train"), size)


if __name__ == "__main__":
    sys.exit(main())
