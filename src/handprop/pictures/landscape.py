"""The math behind the lesson's pictures, pure torch: one digit's backpropagation sweep, the
cost over a plane through weight space, and the path the optimiser took (Li et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
    from ..functional import nudges  # noqa: PLC0415

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
    from ..functional import ACTIVATIONS, COSTS  # noqa: PLC0415
    from ..functional.backprop import forward_layers  # noqa: PLC0415

    (w, b), (dw, db), (ew, eb) = params[:2], directions[0][:2], directions[1][:2]
    a, bb, c = torch.addmm(b, x, w.t()), torch.addmm(db, x, dw.t()), torch.addmm(eb, x, ew.t())
    first, rest = ACTIVATIONS[activations[0]].fn, list(activations[1:])
    flags = ((False, False, False),) * len(rest)  # nothing kept for a backward
    surface = torch.empty(len(betas), len(alphas))
    for i, beta in enumerate(betas.tolist()):
        for j, alpha in enumerate(alphas.tolist()):
            h = first(a + alpha * bb + beta * c)
            moved = [p + alpha * d + beta * e for p, d, e in zip(params[2:], directions[0][2:], directions[1][2:])]
            out, _ = forward_layers(h, moved, rest, (None,) * len(rest), flags)
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


def descent_grid(path: Tensor, points: int = 13, margin: float = 0.25) -> tuple[Tensor, Tensor]:
    """α and β values (``points`` each) covering the path and θ* with ``margin`` of its
    extent to spare on every side."""
    lo, hi = path.min(0).values.clamp_max(0), path.max(0).values.clamp_min(0)
    pad = (hi - lo) * margin
    return tuple(torch.linspace(float(lo[k] - pad[k]), float(hi[k] + pad[k]), points) for k in range(2))
