"""Pictures of a network in training: what its first-layer neurons look for, what it gets wrong."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layout import DPI, _mosaic, _nice_ticks, _tick_label

# --------------------------------------------------------------------------- neurons


def weights_figure(
    weight: Tensor, epoch: int, max_neurons: int = 64, neurons: str = "hidden neurons", columns: int = 8
):
    """First-layer weights (neurons, side*side): each neuron's incoming weights as a
    side x side picture -- "what each neuron looks for" in 3Blue1Brown's lesson -- red for
    positive, blue for negative, white for zero, all tiles on one symmetric scale (its
    colour bar; the top 0.5% of |w| saturate), so that a faint tile is a neuron with
    small weights."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    total, inputs = weight.shape
    side = math.isqrt(inputs)
    w = weight.detach()[:max_neurons].float().cpu()
    n = len(w)
    columns = min(columns, math.ceil(math.sqrt(n)))
    magnitudes = w.abs().flatten()
    limit = max(float(magnitudes.kthvalue(math.ceil(0.995 * len(magnitudes))).values), 1e-12)
    square = side * side == inputs
    tiles = w.view(n, side, side) if square else w.view(n, 1, inputs)  # (inputs that are no square: strips)
    image, _ = _mosaic(tiles, columns, gap_x=2, gap_y=2)
    shown = f"all {n} {neurons}" if n == total else f"{n} of {total} {neurons}"
    picture = f"{side}×{side} picture" if square else "strip"

    image_w = 6.4  # inches: a weight is about 2.6 screen pixels in an 8-column grid
    image_h = image_w * image.shape[0] / image.shape[1]
    left, right, bottom, header = 0.1, 1.25, 0.1, 0.62
    fig_w, fig_h = left + image_w + right, bottom + image_h + header
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=DPI)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, image_w / fig_w, image_h / fig_h))
    cmap = plt.get_cmap("bwr").with_extremes(bad="white")
    im = ax.imshow(image.numpy(), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.axis("off")
    cax = fig.add_axes(
        ((left + image_w + 0.15) / fig_w, (bottom + 0.1 * image_h) / fig_h, 0.14 / fig_w, 0.8 * image_h / fig_h)
    )
    extend = "both" if float(w.abs().max()) > limit else "neither"
    bar = fig.colorbar(im, cax=cax, extend=extend)
    bar.set_label("weight: red positive, blue negative\n(one scale for all tiles)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    title = (
        f"first layer, epoch {epoch}: what each neuron looks for\n"
        f"the {inputs} incoming weights of {shown}, each as a {picture}"
    )
    fig.text(0.5, 1 - 0.08 / fig_h, title, ha="center", va="top", fontsize=10)
    return fig


# --------------------------------------------------------------------------- mistakes


def confusion_figure(matrix: Tensor, epoch: int, subset: str = "validation"):
    """A (classes x classes) count matrix, rows = true digit, columns = predicted, each
    non-zero cell with its count. The colours are counts on a log scale -- on a linear one
    the full diagonal would leave every mistake as pale as an empty cell."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn
    from matplotlib.colors import ListedColormap, LogNorm  # noqa: PLC0415

    m = matrix.detach().cpu().long()
    n, total = len(m), int(m.sum())
    mistakes = total - int(m.trace())
    norm = LogNorm(vmin=1, vmax=max(2, int(m.max())))
    fig = plt.figure(figsize=(5.4, 4.9), dpi=DPI)  # placed by hand: a layout engine doubles the drawing time
    ax = fig.add_axes((0.11, 0.1, 0.68, 0.75))
    blues = plt.get_cmap("Blues")  # from a light blue up: a single mistake must not look like an empty cell
    cmap = ListedColormap(blues(torch.linspace(0.22, 1, 256).numpy())).with_extremes(bad="white")
    counts = m.float().masked_fill(m == 0, float("nan"))  # an empty cell is white
    im = ax.imshow(counts.numpy(), cmap=cmap, norm=norm)
    for i in range(n):
        for j in range(n):
            count = int(m[i, j])
            if count:
                dark = norm(count) > 0.6
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    plural = "" if mistakes == 1 else "s"
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted digit", ylabel="true digit")
    ax.set_title(
        f"{subset} confusion matrix, epoch {epoch}\n{mistakes} mistake{plural} of {total} {subset} digits", fontsize=10
    )
    bar = fig.colorbar(im, cax=fig.add_axes((0.82, 0.1, 0.03, 0.75)))
    bar.minorticks_off()
    ticks = _nice_ticks(norm.vmin, norm.vmax, integers=True)
    bar.set_ticks(ticks, labels=[_tick_label(t) for t in ticks])
    bar.set_label("digits in the cell (count, log scale)")
    return fig


def mistakes_figure(
    images: Tensor,
    labels: Tensor,
    predicted: Tensor,
    scores: Tensor,
    epoch: int,
    *,
    mistakes: int,
    total: int,
    as_probabilities: bool = True,
    columns: int = 8,
):
    """Misread digits (n, 1, 28, 28) in [0, 1], each captioned 'true 3 → predicted 5' and
    its score: 'p(5) = 0.89' when the network's outputs are class probabilities
    (``as_probabilities``: a softmax or a sigmoid scored by cross-entropy), 'output(5) = 0.89'
    when they are activations that merely rank the classes (the quadratic cost).
    ``mistakes`` of ``total`` validation digits were misread; the first n are shown."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    n = len(images)
    title = f"{mistakes} of {total} misread validation digits, epoch {epoch}"
    if n < mistakes:
        title += f" (the first {n} shown)"
    scale = 3  # screen pixels per image pixel: a digit is 84 pixels
    header = 0.38  # inches, for the title
    if n == 0:
        fig = plt.figure(figsize=(5.0, 0.9), dpi=DPI)
        fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=10)
        return fig
    columns = min(columns, n)
    side = images.shape[-1]
    image, corner = _mosaic(images.detach().float().cpu().view(n, side, -1), columns, gap_x=12, gap_y=3, top=10)
    image_w, image_h = image.shape[1] * scale / DPI, image.shape[0] * scale / DPI
    fig_w = max(image_w, 5.0)  # the title fits
    fig = plt.figure(figsize=(fig_w, image_h + header), dpi=DPI)
    ax = fig.add_axes(((fig_w - image_w) / 2 / fig_w, 0, image_w / fig_w, image_h / (image_h + header)))
    ax.imshow(image.numpy(), cmap=plt.get_cmap("gray_r").with_extremes(bad="white"), vmin=0, vmax=1)
    ax.axis("off")
    score = "p" if as_probabilities else "output"
    for k in range(n):
        x, y = corner(k)
        truth, guess = int(labels[k]), int(predicted[k])
        ax.text(x + side / 2, y - 5.5, f"true {truth} → predicted {guess}", ha="center", va="bottom", fontsize=7)
        ax.text(
            x + side / 2,
            y - 0.5,
            f"{score}({guess}) = {float(scores[k]):.2f}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="crimson",
        )
    fig.text(0.5, 1 - 0.08 / (image_h + header), title, ha="center", va="top", fontsize=10)
    return fig
