"""What digits ask of every weight and bias: backpropagation's sweep with its inside shown.

3Blue1Brown's backpropagation lesson follows one training digit through the network.
The output neurons should have been the desired output; each wants a nudge, up or down,
in proportion to how far off it is. Those nudges flow back to the neurons of the layer
below, each weighted by its connection, and every weight is asked to change in
proportion to the activation on its input: "a change for every weight and bias". The
average of those changes over a mini-batch is the step gradient descent takes.

``nudges`` runs the very sweeps that train the network (``forward_layers``, the cost's
backward, ``backward_layers``) and keeps what the training sweep throws away:

    the output, read the way the cost reads it    softmax(z) for cross-entropy, σ(z) for
                                                  Nielsen's, the activations for the
                                                  quadratic costs
    the desired output                            the cost's target in the same terms
    -∂C/∂a⁽ˡ⁾ for every layer's activations      the nudges, top to bottom
    -∂C/∂W⁽ˡ⁾, -∂C/∂b⁽ˡ⁾ for every layer         the changes asked of the weights and biases

Everything is for the cost of the digits given, averaged over them as the cost is: for
one digit, what that digit asks; for a mini-batch, the gradient the optimiser steps on.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .activations import ACTIVATIONS
from .backprop import _one, backward_layers, every_parameter, forward_layers
from .costs import COSTS


class Nudges(NamedTuple):
    read: Tensor  # (N, K): the output as the cost reads it
    desired: Tensor  # (N, K): what the cost wants it to be
    activations: list[Tensor]  # per layer, bottom to top: a⁽ˡ⁾ (N, n_l), the last one the raw output
    pulls: list[Tensor]  # per layer, bottom to top: -∂C/∂a⁽ˡ⁾ (N, n_l), the nudge each neuron wants
    changes: list[Tensor]  # weight and bias of each layer in turn: -∂C/∂W⁽ˡ⁾, -∂C/∂b⁽ˡ⁾
    cost: Tensor  # C, averaged over the digits
    slopes: list[Tensor]  # per layer, bottom to top: f'(z⁽ˡ⁾) (N, n_l), from what its forward kept for its backward


@torch.no_grad()
def nudges(x: Tensor, target: Tensor, cost: str, label_smoothing: float, activations: tuple, params) -> Nudges:
    """One backpropagation sweep over the digits ``x`` (N, 784) with labels ``target``, the
    network as it is evaluated (no dropout): its inside, as the module docstring lists it.
    ``params``: weight and bias of each layer in turn (``MLP.weights_and_biases``)."""
    n = len(activations)
    wants = tuple((True, w, b) for _, w, b in every_parameter(n))  # dx everywhere: the nudges of every layer
    out, saved = forward_layers(x, params, activations, (None,) * n, wants)
    c = COSTS[cost]
    loss, cost_saved = c.forward(out, target, label_smoothing)
    g = c.backward(_one(loss.dtype, loss.device), cost_saved, label_smoothing).to(out.dtype)  # ∂C/∂output
    pulls = []
    _, grads = backward_layers(g, saved, activations, wants, pulls)
    pulls, changes = [-p for p in pulls], [-d for d in grads]
    acts = [s.x for s in saved[1:]] + [out]  # each layer's input is the activation of the one below
    slopes = [ACTIVATIONS[f].chain(torch.ones_like(a), s.kept) for f, s, a in zip(activations, saved, acts)]
    return Nudges(c.read(out), c.desired(target, out, label_smoothing), acts, pulls, changes, loss, slopes)


def ranking(inside: Nudges, layer: int) -> Tensor:
    """The neurons of ``layer`` (0: the first hidden layer), the one passing on the largest
    change first: by |∂C/∂z|, which is the size of the neuron's bias change and the scale of
    all its weight changes. A saturated or switched-off neuron (f'(z) near 0) passes on
    almost nothing, however large the nudge it is asked for, and ranks low."""
    return inside.changes[2 * layer + 1].abs().argsort(descending=True, stable=True)


@functools.lru_cache
def steepest(activation: str) -> float:
    """The largest slope f'(z) of an activation, over z in [-8, 8], by its own chain rule."""
    f, z = ACTIVATIONS[activation], torch.linspace(-8, 8, 1601, dtype=torch.float64)
    kept = {"output": f.fn(z), "input": z, "nothing": None}[f.saves]
    return float(f.chain(torch.ones_like(z), kept).abs().max())


def neuron_states(activation: str, a: Tensor, slopes: Tensor) -> list[str]:
    """Per neuron of a layer, for one digit: "off" (a switched-off ReLU: a = 0, so no change
    passes through it), "saturated" (its slope f'(z) under 5% of the activation's
    steepest: a sigmoid's a near 0 or 1), or ""."""
    if activation == "relu":
        return ["off" if v <= 0 else "" for v in a.tolist()]
    limit = 0.05 * steepest(activation)
    return ["saturated" if abs(v) < limit else "" for v in slopes.tolist()]
