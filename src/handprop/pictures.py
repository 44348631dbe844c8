"""Pictures of a network learning: what its neurons look for, what it gets wrong, and the
valley of the cost function it walks down. Pure functions: tensors in, matplotlib figures
out; the TensorBoard callback in ``callbacks/visuals.py`` calls them. Every picture says
what it shows: a title (with the 1-based epoch), and a colour bar or legend in the units
it draws.

The descent picture follows Li, Xu, Taylor, Studer and Goldstein (2018), "Visualizing the
Loss Landscape of Neural Nets", section 7: the optimiser's path through weight space,
θ_0, θ_1, ..., θ* (every weight and bias, snapshots along training), drawn on the plane
through the trained weights θ* that the path itself spans most -- the two principal
directions of the differences θ_t − θ* -- over the training cost measured on that plane.
Two random directions, the paper's other view, are nearly orthogonal to the path in
~10⁵ dimensions: on them the path projects to a dot and a barely trained network draws
the same bowl as a trained one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DPI = 100

# --------------------------------------------------------------------------- layout


def _mosaic(tiles: Tensor, columns: int, gap_x: int, gap_y: int, top: int = 0) -> tuple[Tensor, Callable]:
    """(n, h, w) tiles -> one (H, W) float image, NaN (drawn white) around and between them,
    with ``top`` empty rows above each tile for its caption; and ``corner(k)``, the (x, y)
    of tile k's top-left pixel. One image in one axes: 64 subplots take a second to draw."""
    n, h, w = tiles.shape
    rows = max(1, -(-n // columns))
    cell_w, cell_h = w + gap_x, top + h + gap_y
    out = torch.full((gap_y + rows * cell_h, gap_x + columns * cell_w), float("nan"))

    def corner(k: int) -> tuple[int, int]:
        r, c = divmod(k, columns)
        return gap_x + c * cell_w, gap_y + r * cell_h + top

    for k in range(n):
        x, y = corner(k)
        out[y : y + h, x : x + w] = tiles[k]
    return out, corner


def _nice_ticks(lo: float, hi: float, integers: bool = False, at_least: int = 3) -> list[float]:
    """Round values in [lo, hi] (lo > 0) for a log-scaled colour bar: 1-2-5 per decade, finer
    when the range is narrower than that."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m * 10**e:.6g}") for e in decades for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi and (not integers or t == int(t))]
        if len(ticks) >= at_least:
            break
    return ticks


def _three_ticks(symmetric: bool = True):
    """At most three round ticks (-t, 0, t on a symmetric axis): every tick is a line and a
    text to draw, and a bar chart of nudges reads by its sign and rough size."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    # (2.5 among the steps: without it a range of ±4.x gets five ticks)
    return MaxNLocator(nbins=2, steps=[1, 2, 2.5, 5, 10], symmetric=symmetric, min_n_ticks=2)


def _tick_label(value: float) -> str:
    return f"{value:g}"


def figure_png(figure) -> tuple[bytes, int, int]:
    """A figure drawn once and closed: its PNG file's bytes, height and width in pixels.
    (zlib's fastest level: a picture's flat colours compress nearly as well, in a
    fraction of the time.)"""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn
    from PIL import Image  # noqa: PLC0415 -- (matplotlib's own dependency)

    figure.canvas.draw()
    pixels = figure.canvas.buffer_rgba()  # (height, width, 4), in device pixels
    image = Image.frombuffer("RGBA", (pixels.shape[1], pixels.shape[0]), pixels).convert("RGB")
    plt.close(figure)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue(), image.height, image.width


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


# --------------------------------------------------------------------------- the descent down the cost


def _sweep_args(model) -> tuple:
    """What the functional sweeps take of a DigitClassifier's network, as it is evaluated:
    its cost, label smoothing, activations, and every weight and bias (detached)."""
    hp = model.hparams
    params = [p.detach() for p in model.net.weights_and_biases()]
    return hp.loss, hp.label_smoothing, tuple(model.net.activations), params


@torch.no_grad()
def nudges_of(model, images: Tensor, labels: Tensor):
    """Backpropagation's sweep over these digits (pixels in [0, 1]) with its inside kept,
    the model's network as it is evaluated (``functional.nudges``): what they ask of every
    weight and bias."""
    from .functional import nudges  # noqa: PLC0415

    return nudges(model.normalize(images), labels, *_sweep_args(model))


@torch.no_grad()
def cost_surface_of(model, images: Tensor, labels: Tensor, directions, alphas: Tensor, betas: Tensor) -> Tensor:
    """The model's cost on these digits at θ + α·d₁ + β·d₂ over the grid of ``alphas`` and
    ``betas`` (``directions``: two lists shaped like the weights and biases), its weights
    left as they are."""
    cost, smoothing, activations, params = _sweep_args(model)
    return mlp_cost_surface(
        model.normalize(images), labels, cost, smoothing, activations, params, directions, alphas, betas
    )


@torch.no_grad()
def mlp_cost_surface(
    x: Tensor,
    target: Tensor,
    cost: str,
    label_smoothing: float,
    activations: Sequence[str],
    params: Sequence[Tensor],
    directions: tuple[Sequence[Tensor], Sequence[Tensor]],
    alphas: Tensor,
    betas: Tensor,
) -> Tensor:
    """The cost at θ + α·d₁ + β·d₂ for every α in ``alphas`` and β in ``betas``, for a
    multilayer perceptron (``params``: weight and bias of each layer in turn, θ) on the
    inputs ``x``, without moving its weights. The first layer's weighted
    input is linear in α and β -- x(W + αD + βE)ᵀ + b + αd + βe = A + αB + βC -- so three
    matrix products serve the whole grid, and only the layers above run at every point:
    the first layer holds most of a digit network's weights. Returns costs[β, α]."""
    from .functional import ACTIVATIONS, COSTS  # noqa: PLC0415
    from .functional.backprop import forward_layers  # noqa: PLC0415

    (w, b), (dw, db), (ew, eb) = params[:2], directions[0][:2], directions[1][:2]
    a, bb, c = torch.addmm(b, x, w.t()), torch.addmm(db, x, dw.t()), torch.addmm(eb, x, ew.t())
    first, rest = ACTIVATIONS[activations[0]].fn, list(activations[1:])
    flags = ((False, False, False),) * len(rest)  # nothing kept for a backward
    surface = torch.empty(len(betas), len(alphas))
    for i, beta in enumerate(betas.tolist()):
        for j, alpha in enumerate(alphas.tolist()):
            h = first(a + alpha * bb + beta * c)
            moved = [p + alpha * d + beta * e for p, d, e in zip(params[2:], directions[0][2:], directions[1][2:])]
            out, _ = forward_layers(h, moved, rest, (None,) * len(rest), 1.0, flags)
            surface[i, j] = COSTS[cost].forward(out, target, label_smoothing)[0].float()
    return surface


class DescentPath:
    """The optimiser's path through weight space: a flat float32 copy (on the CPU) of every
    weight and bias at least ``stride`` optimiser steps after the last one kept. When more
    than ``capacity`` are held, the stride doubles and the path is thinned to that
    spacing (the first snapshot always stays), so a run of any length keeps at most
    ``capacity`` + 1 evenly spaced snapshots from where it started: memory is bounded by
    that many copies of the network."""

    def __init__(self, capacity: int = 32):
        self.capacity, self.stride = capacity, 1
        self.steps: list[int] = []
        self.snapshots: list[Tensor] = []

    @torch.no_grad()
    def record(self, step: int, params: Sequence[Tensor]) -> None:
        if self.steps and step - self.steps[-1] < self.stride:
            return
        self.steps.append(step)
        self.snapshots.append(torch.cat([p.detach().reshape(-1).float().cpu() for p in params]))
        while len(self.snapshots) > self.capacity:
            self.stride *= 2
            keep = [0]
            for i in range(1, len(self.steps)):
                if self.steps[i] - self.steps[keep[-1]] >= self.stride:
                    keep.append(i)
            self.steps = [self.steps[i] for i in keep]
            self.snapshots = [self.snapshots[i] for i in keep]

    @torch.no_grad()
    def plane(self, final: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor] | None:
        """The principal plane of the path around θ* = ``final`` (the parameters, as
        recorded): the two directions (2, P), unit length, along which the snapshots'
        differences θ_t − θ* spread most; the path in them, (snapshots + 1, 2), ending at
        θ* = (0, 0); and the share of Σ_t |θ_t − θ*|² each direction explains. None when
        the path has not moved. Oriented so that the path starts at negative α and β.

        The K snapshots are few and the weights many, so the directions come from the
        K x K matrix of their dot products (D Dᵀ = U S² Uᵀ gives D's right singular
        vectors as Dᵀ U / S) rather than from an SVD of the K x P matrix itself."""
        theta = torch.cat([p.detach().reshape(-1).float().cpu() for p in final])
        diffs = torch.stack(self.snapshots).sub_(theta) if self.snapshots else theta.new_zeros(0, theta.numel())
        gram = (diffs @ diffs.T).double()  # K x K; float32 products, the eigenproblem in float64
        values, vectors = torch.linalg.eigh(gram)  # ascending
        values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
        total = float(values.sum())
        if len(values) < 2 or values[1] <= 1e-9 * total or total == 0:
            return None
        directions = (vectors[:, :2].T.float() @ diffs) / values[:2].sqrt().float()[:, None]
        coords = diffs @ directions.T
        signs = torch.where(coords[0] > 0, -1.0, 1.0)
        directions, coords = directions * signs[:, None], coords * signs
        path = torch.cat([coords, coords.new_zeros(1, 2)])
        return directions, path, (values[:2] / total).float()


def _cost_contours(fig, ax, alphas: Tensor, betas: Tensor, surface: Tensor, cax=None) -> None:
    """Filled contours of the cost, on a log colour scale with a colour bar in cost units
    (a far wall is capped, so that it does not take every colour)."""
    from matplotlib.colors import LogNorm  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    lo = float(surface.min().clamp_min(1e-12))
    top = lo + 10 * (float(surface.median()) - lo) + 1e-6
    hi = max(min(float(surface.max()), top), lo * 1.01)
    z = surface.clamp(lo, hi).numpy()
    levels = torch.logspace(math.log10(lo), math.log10(hi), 21).numpy()
    norm = LogNorm(vmin=lo, vmax=hi)
    filled = ax.contourf(alphas.numpy(), betas.numpy(), z, levels=levels, cmap="viridis", norm=norm)
    ax.contour(alphas.numpy(), betas.numpy(), z, levels=levels, colors="white", linewidths=0.3)
    bar = fig.colorbar(filled, ax=ax, cax=cax)
    bar.minorticks_off()
    ticks = _nice_ticks(lo, hi, at_least=4)
    bar.set_ticks(ticks, labels=[_tick_label(t) for t in ticks])
    capped = ", capped" if float(surface.max()) > hi else ""
    bar.set_label(f"training cost (log scale{capped})")


def descent_grid(path: Tensor, points: int = 13, margin: float = 0.25) -> tuple[Tensor, Tensor]:
    """α and β values (``points`` each) covering the path and θ* with ``margin`` of its
    extent to spare on every side."""
    lo, hi = path.min(0).values.clamp_max(0), path.max(0).values.clamp_min(0)
    pad = (hi - lo) * margin
    return tuple(torch.linspace(float(lo[k] - pad[k]), float(hi[k] + pad[k]), points) for k in range(2))


def descent_figure(
    alphas: Tensor,
    betas: Tensor,
    surface: Tensor,
    path: Tensor,
    explained: Tensor,
    steps: Sequence[int],
    title: str = "gradient descent down the cost",
):
    """The training cost over the plane of the path (``descent_grid``), the path on it from
    its first snapshot (step ``steps[0]``) to the trained weights at (0, 0), and on each
    axis the share of the path's spread it explains."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    fig = plt.figure(figsize=(6.4, 5.4), dpi=DPI)  # placed by hand: a layout engine doubles the drawing time
    ax = fig.add_axes((0.11, 0.09, 0.72, 0.77))
    _cost_contours(fig, ax, alphas, betas, surface, cax=fig.add_axes((0.86, 0.09, 0.03, 0.77)))
    p = path.numpy()
    ax.plot(p[:, 0], p[:, 1], "-o", color="red", markersize=2.5, linewidth=1.2, label="the optimiser's path")
    ax.plot(
        p[0, 0], p[0, 1], "o", color="white", markeredgecolor="red", markersize=7, label=f"start (step {steps[0]:,})"
    )
    ax.plot(
        [0],
        [0],
        "*",
        color="white",
        markeredgecolor="black",
        markeredgewidth=0.5,
        markersize=13,
        label=f"trained weights (step {steps[-1]:,})",
    )
    ax.legend(loc="best", fontsize=7)
    ax.set(
        xlim=(float(alphas[0]), float(alphas[-1])),
        ylim=(float(betas[0]), float(betas[-1])),
        xlabel=f"direction 1: {100 * float(explained[0]):.1f}% of the path's spread",
        ylabel=f"direction 2: {100 * float(explained[1]):.1f}%",
    )
    fig.suptitle(title, fontsize=10)
    ax.set_title(
        f"the plane the path itself spans most, through the trained weights (Li et al. 2018)\n"
        f"{len(p) - 1} snapshots of every weight and bias, {100 * float(explained.sum()):.0f}% of the path's "
        "spread in this plane",
        fontsize=8,
    )
    return fig


# --------------------------------------------------------------------------- backpropagation, one digit


def _signed_bars(ax, values: Tensor, labels: Sequence, title: str, ylabel: str) -> None:
    """Bars up in red (increase), down in blue (decrease), on a symmetric axis."""
    v = values.float().cpu()
    colours = ["#d62728" if x > 0 else "#1f77b4" for x in v.tolist()]
    ax.bar(range(len(v)), v.numpy(), color=colours)
    ax.axhline(0, color="black", linewidth=0.6)
    top = max(float(v.abs().max()), 1e-12) * 1.15
    ax.set_ylim(-top, top)
    ax.yaxis.set_major_locator(_three_ticks())
    ax.set_xticks(range(len(v)), [str(x) for x in labels], fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(axis="y", labelsize=7)


def backprop_figure(
    digit: Tensor,
    label: int,
    one,
    batch=None,
    batch_size: int = 0,
    when: str = "",
    calibrated: bool = True,
    neurons: int = 8,
    top: int = 16,
):
    """3Blue1Brown's backpropagation for one digit, from ``functional.nudges``:

      the digit and what the network outputs for it against what the cost wants;
      the nudge each output neuron wants (-∂C/∂output: desired - output);
      those nudges flowing back, weighted by the connections, to the hidden neurons
        (-∂C/∂a of each hidden layer, its ``top`` largest);
      the change the digit asks of the first layer's weights (-∂C/∂W: red up, blue down),
        each hidden neuron's 784 incoming weights as a 28x28 picture, for the ``neurons``
        hidden neurons this digit pushes hardest;
      and (``batch``, the nudges of a mini-batch of ``batch_size`` digits) the same
        neurons' changes averaged over the mini-batch: the step gradient descent takes.

    ``one``: the digit's Nudges (one digit); ``calibrated``: whether the outputs read are
    probabilities (softmax, sigmoid) or activations (the quadratic costs)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    read, desired = one.read[0].float().cpu(), one.desired[0].float().cpu()
    hidden = len(one.pulls) - 1
    rows = 2 + (hidden > 0) + (batch is not None)
    heights = [1.0] * (rows - 1 - (batch is not None)) + [0.75] * (1 + (batch is not None))
    fig_h = 2.2 * sum(heights) + 0.9
    fig = plt.figure(figsize=(10.0, fig_h), dpi=DPI)
    grid = fig.add_gridspec(
        rows,
        max(neurons, 6),
        height_ratios=heights,
        left=0.07,
        right=0.9,
        top=1 - 0.7 / fig_h,
        bottom=0.1 / fig_h,
        hspace=0.8,
        wspace=0.35,
    )
    classes = range(len(read))
    predicted = int(read.argmax())

    ax = fig.add_subplot(grid[0, 0:2])
    ax.imshow(digit.float().cpu().view(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"the digit: a {label}, read as {predicted}", fontsize=8)
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 2 : 2 + (max(neurons, 6) - 2) // 2])
    width = 0.4
    ax.bar([k - width / 2 for k in classes], read.numpy(), width, color="0.45", label="the network's output")
    ax.bar([k + width / 2 for k in classes], desired.numpy(), width, color="white", edgecolor="black", label="desired")
    ax.set_xticks(list(classes), [str(k) for k in classes], fontsize=7)
    ax.set_title("output vs what the cost wants", fontsize=8)
    ax.set_ylabel("p(digit)" if calibrated else "output activation", fontsize=7)
    ax.yaxis.set_major_locator(_three_ticks(symmetric=not calibrated))
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, loc="upper left")

    ax = fig.add_subplot(grid[0, 2 + (max(neurons, 6) - 2) // 2 :])
    _signed_bars(
        ax,
        one.pulls[-1][0],
        list(classes),
        "the nudge each output neuron wants: desired - output",
        "-∂C/∂output",
    )

    row = 1
    if hidden:
        panels = grid[row, :].subgridspec(1, hidden, wspace=0.15)  # room for each panel's tick labels
        axes = []
        for i in range(hidden):
            pull = one.pulls[i][0].float().cpu()
            order = pull.abs().argsort(descending=True)[:top].sort().values
            ax = fig.add_subplot(panels[0, i])
            shown = f"the {len(order)} of {len(pull)} pushed hardest" if len(order) < len(pull) else f"all {len(pull)}"
            ylabel = "" if i else "-∂C/∂a"  # (the panels side by side share it; a second would run into the first)
            _signed_bars(ax, pull[order], order.tolist(), f"hidden layer {i + 1}: {shown}", ylabel)
            axes.append(ax)
        axes[0].annotate(
            "the nudges flowing back to the hidden neurons: each one the sum of the nudges above, "
            "weighted by its connections to them",
            (0, 1.28),
            xycoords="axes fraction",
            fontsize=8,
            ha="left",
        )
        row += 1

    # the first layer's weight changes: dz_j times the pixels, for the neurons pushed hardest
    change = one.changes[0].float().cpu()
    strongest = one.changes[1].float().cpu().abs().argsort(descending=True)[:neurons]
    sources = [("this digit asks", change)]
    if batch is not None:
        sources.append((f"averaged over a mini-batch of {batch_size}: the step", batch.changes[0].float().cpu()))
    cmap = plt.get_cmap("bwr").with_extremes(bad="white")
    for name, weights in sources:
        tiles = weights[strongest]
        limit = max(float(tiles.abs().max()), 1e-12)
        image, corner = _mosaic(tiles.view(-1, 28, 28), len(tiles), gap_x=6, gap_y=2, top=7)
        ax = fig.add_subplot(grid[row, :])
        im = ax.imshow(image.numpy(), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        for k, j in enumerate(strongest.tolist()):
            x, y = corner(k)
            ax.text(x + 14, y - 1.5, f"neuron {j}", ha="center", va="bottom", fontsize=7)
        ax.axis("off")
        box = ax.get_position()
        bar = fig.colorbar(im, cax=fig.add_axes((0.915, box.y0, 0.012, box.height)))
        bar.locator = _three_ticks()
        bar.ax.tick_params(labelsize=6)
        bar.set_label("-∂C/∂w", fontsize=7)
        ax.set_title(
            f"first-layer weight changes {name}: each neuron's 784 incoming weights (red up, blue down)",
            fontsize=8,
            loc="left",
        )
        row += 1

    fig.suptitle(f"backpropagation for one digit{', ' + when if when else ''}", fontsize=10)
    return fig
