"""The functions to call: a layer, a whole MLP, a cost -- each with ``backward="manual"``
(the Functions of ``backprop.py``) or ``"autograd"`` (the same forward math in plain torch
ops, differentiated by PyTorch: the reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import ACTIVATIONS
from .backprop import CostFunction, LinearActFunction, MLPFunction
from .costs import COSTS


def dropout_mask(shape, p: float, device=None) -> Tensor:
    """Inverted dropout's mask m: 1/(1-p) for a unit that survives (probability 1 - p), 0
    for one dropped, from float32 uniform draws, the same whatever dtype the activations
    have. (A float mask: multiplying by a boolean one costs several times as much on a CPU.)"""
    return torch.rand(shape, device=device).ge_(p).mul_(1 / (1 - p))


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str = "identity",
    dropout: float = 0.0,
    backward: str = "manual",
) -> Tensor:
    """One fully connected layer, its activation and (p = ``dropout`` > 0) inverted dropout:
    y = f(x Wᵀ + b) ⊙ m, with x of shape (N, n_in). Pass dropout=0 outside training.
    ``backward``: "manual" (ours) or "autograd". The settings are the config gate's to
    check, before a run: this runs every training step."""
    if x.dim() != 2:
        raise ValueError(f"linear expects a batch of vectors (N, n_in), got shape {tuple(x.shape)}")
    # one mask for both backward modes: with the same seed they see the same units
    mask = dropout_mask((x.shape[0], weight.shape[0]), dropout, x.device) if dropout else None
    if backward == "manual":
        return LinearActFunction.apply(x, weight, bias, activation, mask)
    a = ACTIVATIONS[activation].fn(F.linear(x, weight, bias))
    return a if mask is None else a * mask


def mlp(
    x: Tensor,
    params: list[tuple[Tensor, Tensor | None]],
    activations: list[str],
    dropout: float = 0.0,
    backward: str = "manual",
    target: Tensor | None = None,
    cost: str = "cross_entropy",
    label_smoothing: float = 0.0,
):
    """A whole MLP: layer i is (weight, bias) = params[i] with activation activations[i];
    dropout (p > 0) follows every layer but the last. Returns the output, or with a
    ``target`` (output, cost) -- computed in the same autograd node in manual mode. The
    settings are the config gate's to check, before a run: this runs every training step."""
    if x.dim() != 2:
        raise ValueError(f"mlp expects a batch of vectors (N, n_in), got shape {tuple(x.shape)}")
    if backward != "manual":
        for i, ((w, b), act) in enumerate(zip(params, activations)):
            x = linear(x, w, b, act, dropout if i < len(params) - 1 else 0.0, backward)
        return x if target is None else (x, COSTS[cost].reference(x, target, label_smoothing))
    flat = [t for pair in params for t in pair]
    masks = dropout_masks(x.shape[0], flat, dropout)
    return MLPFunction.apply(x, target, cost, label_smoothing, tuple(activations), masks, *flat)


def dropout_masks(n: int, params, dropout: float) -> tuple:
    """The dropout masks of a batch of ``n`` for every layer but the last (None: no dropout),
    drawn layer by layer, as the reference path draws them: same seed, same masks.
    ``params``: weight and bias of each layer in turn."""
    weights = params[0::2]
    if not dropout:
        return (None,) * len(weights)
    return tuple(dropout_mask((n, w.shape[0]), dropout, w.device) for w in weights[:-1]) + (None,)


def cost(name: str, output: Tensor, target: Tensor, label_smoothing: float = 0.0, backward: str = "manual") -> Tensor:
    """The cost ``name`` (one of COSTS) of a batch's output against integer class labels,
    differentiated by our backward ("manual") or by PyTorch's autograd."""
    if backward == "manual":
        return CostFunction.apply(output, target, name, label_smoothing)
    return COSTS[name].reference(output, target, label_smoothing)


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0, backward: str = "manual") -> Tensor:
    """Mean cross-entropy of softmax(logits) against integer class labels."""
    return cost("cross_entropy", logits, target, label_smoothing, backward)


def quadratic_cost(output: Tensor, target: Tensor, label_smoothing: float = 0.0, backward: str = "manual") -> Tensor:
    """Half the squared distance of the output from the one-hot label, averaged over the batch."""
    return cost("quadratic", output, target, label_smoothing, backward)


def binary_cross_entropy(
    logits: Tensor, target: Tensor, label_smoothing: float = 0.0, backward: str = "manual"
) -> Tensor:
    """Nielsen's cross-entropy: a sigmoid yes/no per output neuron, summed over them, averaged over the batch."""
    return cost("binary_cross_entropy", logits, target, label_smoothing, backward)
