"""Pictures of a network learning: what its neurons look for, what it gets wrong, and the
valley of the cost function it walks down. Pure functions: tensors in, matplotlib figures
out; the TensorBoard callback in ``callbacks/visuals.py`` calls them. Every picture says
what it shows: a title (with the 1-based epoch), and a colour bar or legend in the units
it draws.

The cost landscape follows Li, Xu, Taylor, Studer and Goldstein (2018), "Visualizing the
Loss Landscape of Neural Nets": around the trained weights θ*, the cost is measured on a
plane θ* + α·d₁ + β·d₂ spanned by two random directions, each *filter-normalised* --
every row of a direction (the weights into one neuron) rescaled to the norm of the same
row of θ* -- so that the picture's scale means the same for layers of any size, and
unaffected by the scale invariances of ReLU networks. Bias directions are zero, as in
the paper's default.
"""

from __future__ import annotations

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


def _tick_label(value: float) -> str:
    return f"{value:g}"


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
    fig, ax = plt.subplots(figsize=(5.4, 4.9), dpi=DPI, layout="constrained")
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
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
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


# --------------------------------------------------------------------------- the cost landscape


@torch.no_grad()
def cost_surface(
    weights: Sequence[Tensor],
    directions: tuple[Sequence[Tensor], Sequence[Tensor]],
    cost: Callable[[], Tensor],
    span: float = 1.0,
    points: int = 15,
) -> tuple[Tensor, Tensor]:
    """The cost at θ* + α·d₁ + β·d₂ for α, β on a points x points grid over [-span, span].

    ``weights`` are the live parameters (moved in place and restored exactly);
    ``cost()`` evaluates the network as it stands. Returns (coordinates, costs[β, α])."""
    coords = torch.linspace(-span, span, points)
    original = [w.detach().clone() for w in weights]
    surface = torch.empty(points, points)
    try:
        for i, beta in enumerate(coords.tolist()):
            for j, alpha in enumerate(coords.tolist()):
                for w, w0, d1, d2 in zip(weights, original, *directions):
                    torch.add(w0, d1, alpha=alpha, out=w.data).add_(d2, alpha=beta)
                surface[i, j] = cost().float()
    finally:
        for w, w0 in zip(weights, original):
            w.data.copy_(w0)
    return coords, surface


class LandscapePlane:
    """The landscape's plane: two random directions, drawn when training starts, and the
    optimiser's path projected onto them -- without storing the path.

    The directions' filter normalisation needs the final weights θ*, known only at the
    end. Projecting a snapshot θ_t needs only the dot product of each of its rows with the
    same row of the raw random direction r -- one number per neuron -- from which, once θ*
    is known,
        (θ_t − θ*)·d = Σ_rows s_row (θ_t,row·r_row − θ*_row·r_row),   s_row = |θ*_row| / |r_row|.
    """

    def __init__(self, weights: Sequence[Tensor], generator: torch.Generator):
        self.raw = [[torch.randn(w.shape, generator=generator).to(w.device) for w in weights] for _ in range(2)]
        self.snapshots: list[list[Tensor]] = []  # per snapshot, per direction: the rows' dot products

    def _row_dots(self, weights: Sequence[Tensor]) -> list[Tensor]:
        return [torch.cat([(w.float() * r).sum(1) for w, r in zip(weights, raw)]) for raw in self.raw]

    @torch.no_grad()
    def record(self, weights: Sequence[Tensor]) -> None:
        self.snapshots.append(self._row_dots(weights))

    def _scales(self, weights: Sequence[Tensor]) -> list[list[Tensor]]:
        return [
            [w.float().norm(dim=1) / r.norm(dim=1).clamp_min(1e-12) for w, r in zip(weights, raw)] for raw in self.raw
        ]

    @torch.no_grad()
    def directions(self, weights: Sequence[Tensor]) -> list[list[Tensor]]:
        """The two filter-normalised directions at ``weights`` (θ*), one tensor per layer."""
        return [[r * s[:, None] for r, s in zip(raw, scales)] for raw, scales in zip(self.raw, self._scales(weights))]

    @torch.no_grad()
    def path(self, weights: Sequence[Tensor]) -> Tensor:
        """(snapshots, 2): each recorded θ_t as the (α, β) of its least-squares projection
        onto the plane through θ* = ``weights``."""
        if not self.snapshots:
            return torch.zeros(0, 2)
        d = self.directions(weights)
        gram = torch.tensor(
            [[float(sum((a * b).sum() for a, b in zip(d[i], d[j]))) for j in range(2)] for i in range(2)]
        )
        scales = [torch.cat(s) for s in self._scales(weights)]
        final = self._row_dots(weights)
        dots = torch.tensor(
            [[float((scales[k] * (snap[k] - final[k])).sum()) for k in range(2)] for snap in self.snapshots]
        )
        return torch.linalg.solve(gram, dots.T).T


def landscape_figure(
    coords: Tensor,
    surface: Tensor,
    path: Tensor | None = None,
    title: str = "training cost around the trained weights",
    visible: float = 0.02,
):
    """Contours of the cost over the plane (colours on a log scale, in cost units), the
    trained weights at (0, 0), and the optimiser's projected path when it shows: when it
    reaches beyond ``visible`` of the plot's width from the centre. Random directions in
    ~10⁵ dimensions are nearly orthogonal to the path (Li et al., section 7), so on them
    it usually stays a dot under the star: then it is left out and the subtitle says so."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn
    from matplotlib.colors import LogNorm  # noqa: PLC0415

    grid = coords.numpy()
    lo = float(surface.min().clamp_min(1e-12))
    top = lo + 10 * (float(surface.median()) - lo) + 1e-6  # a far wall would take every colour
    hi = max(min(float(surface.max()), top), lo * 1.01)
    z = surface.clamp(lo, hi).numpy()
    levels = torch.logspace(math.log10(lo), math.log10(hi), 21).numpy()
    fig, ax = plt.subplots(figsize=(6.0, 5.4), dpi=DPI, layout="constrained")
    norm = LogNorm(vmin=lo, vmax=hi)
    filled = ax.contourf(grid, grid, z, levels=levels, cmap="viridis", norm=norm)
    ax.contour(grid, grid, z, levels=levels, colors="white", linewidths=0.3)
    bar = fig.colorbar(filled, ax=ax)
    bar.minorticks_off()
    ticks = _nice_ticks(lo, hi, at_least=4)
    bar.set_ticks(ticks, labels=[_tick_label(t) for t in ticks])
    capped = ", capped" if float(surface.max()) > hi else ""
    bar.set_label(f"training cost (log scale{capped})")

    subtitle = "two random filter-normalised directions through the final weights (Li et al. 2018)"
    if path is not None and len(path):
        extent = float(path.abs().max())
        if extent > visible * float(coords[-1] - coords[0]):
            p = path.numpy()
            ax.plot(p[:, 0], p[:, 1], "-o", color="red", markersize=2, linewidth=1, label="optimiser's path, projected")
        else:
            subtitle += f"\nthe optimiser's path, projected, stays within ±{extent:.2g} of the star: too small to draw"
    ax.plot(
        [0],
        [0],
        "*",
        color="white",
        markeredgecolor="black",
        markeredgewidth=0.5,
        markersize=12,
        label="trained weights",
    )
    ax.legend(loc="upper right", fontsize=7)
    ax.set(xlim=(grid[0], grid[-1]), ylim=(grid[0], grid[-1]), xlabel="α (direction 1)", ylabel="β (direction 2)")
    fig.suptitle(title, fontsize=10)
    ax.set_title(subtitle, fontsize=8)
    return fig
