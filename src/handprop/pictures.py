"""Pictures of a network learning: what its neurons look for, what it gets wrong, and the
valley of the cost function it walks down. Pure functions: tensors in, images or
matplotlib figures out; the TensorBoard callback in ``callbacks.py`` calls them.

The cost landscape follows Li, Xu, Taylor, Studer and Goldstein (2018), "Visualizing the
Loss Landscape of Neural Nets": around the trained weights θ*, the cost is measured on a
plane θ* + α·d₁ + β·d₂ spanned by two random directions, each *filter-normalised* --
every row of a direction (the weights into one neuron) rescaled to the norm of the same
row of θ* -- so that the picture's scale means the same for layers of any size, and
unaffected by the scale invariances of ReLU networks. Bias directions are zero, as in
the paper's default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# --------------------------------------------------------------------------- neurons


def weight_grid(weight: Tensor, side: int = 28, max_neurons: int = 64, pad: int = 2) -> Tensor:
    """First-layer weights (neurons, side*side) -> one RGB image (3, H, W) in [0, 1]: each
    neuron's incoming weights as a side x side picture, red for positive, blue for
    negative, white for zero, each scaled to its own largest weight -- "what each neuron
    looks for" in 3Blue1Brown's lesson."""
    from torchvision.utils import make_grid  # noqa: PLC0415 -- torchvision loads only when a picture is drawn

    w = weight.detach()[:max_neurons].float().cpu()
    w = w / w.abs().amax(1, keepdim=True).clamp_min(1e-12)  # each neuron in [-1, 1]
    pos, neg = w.clamp(min=0), (-w).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - pos - neg, 1 - pos], 1).view(-1, 3, side, side)
    grid = make_grid(rgb, nrow=min(8, len(rgb)), padding=pad, pad_value=1.0)
    return grid.repeat_interleave(3, 1).repeat_interleave(3, 2)  # 3x, so that a pixel is visible


# --------------------------------------------------------------------------- mistakes


def confusion_figure(matrix: Tensor, title: str = "validation confusion matrix"):
    """A (classes x classes) count matrix, rows = true digit, columns = predicted."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    m = matrix.detach().cpu()
    n, shade = len(m), m.float().log1p()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    im = ax.imshow(shade.numpy(), cmap="Blues")  # log: the diagonal would hide every mistake
    for i in range(n):
        for j in range(n):
            count = int(m[i, j])
            if count:
                dark = shade[i, j] > 0.6 * shade.max()
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="log(1 + count)")
    fig.tight_layout()
    return fig


def mistakes_figure(images: Tensor, labels: Tensor, predicted: Tensor, probabilities: Tensor, columns: int = 8):
    """Misclassified digits (N, 1, 28, 28) in [0, 1], each captioned 'true→predicted (p)'.
    One grid image in one axes: 32 separate subplots take a second to draw."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn
    from torchvision.utils import make_grid  # noqa: PLC0415 -- torchvision loads only when a picture is drawn

    n, side, pad = len(images), images.shape[-1], 10  # the caption sits in the padding above its digit
    rows = max(1, -(-n // columns))
    grid = make_grid(1 - images.detach().float().cpu(), nrow=columns, padding=pad, pad_value=1.0)[0]
    fig, ax = plt.subplots(figsize=(1.3 * columns, 1.45 * rows + 0.4), dpi=100)
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    for k in range(n):
        r, c = divmod(k, columns)
        ax.text(
            pad + c * (side + pad) + side / 2,
            r * (side + pad) + pad - 1,
            f"{int(labels[k])}→{int(predicted[k])} ({float(probabilities[k]):.2f})",
            ha="center",
            va="bottom",
            fontsize=7,
            color="crimson",
        )
    ax.axis("off")
    ax.set_title("misclassified validation digits: true→predicted (its probability)", fontsize=9)
    fig.tight_layout()
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


def landscape_figure(coords: Tensor, surface: Tensor, path: Tensor | None = None, title: str = "cost landscape"):
    """Contours of the cost over the plane, the trained weights at (0, 0), the path if given."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    grid = coords.numpy()
    z = surface.clamp_max(surface.min() + 10 * (surface.median() - surface.min()) + 1e-6).log().numpy()
    filled = ax.contourf(grid, grid, z, levels=20, cmap="viridis")
    ax.contour(grid, grid, z, levels=20, colors="white", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="log cost")
    if path is not None and len(path):
        # Random directions in a space of ~10⁵ dimensions are nearly orthogonal to the path
        # (Li et al., section 7): its shadow on this plane is small; the legend gives its size.
        p = path.numpy()
        extent = float(path.abs().max())
        ax.plot(
            p[:, 0],
            p[:, 1],
            "-o",
            color="red",
            markersize=2,
            linewidth=1,
            label=f"optimiser's path, projected (within ±{extent:.2g})",
        )
        ax.legend(loc="upper right", fontsize=7)
    ax.plot([0], [0], "*", color="white", markersize=10)
    ax.set(xlabel="α (direction 1)", ylabel="β (direction 2)", title=title)
    fig.tight_layout()
    return fig
