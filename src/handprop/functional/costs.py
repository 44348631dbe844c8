"""The costs: each with its gradient with respect to the network's output.

Each cost is a forward/backward pair: forward returns C and what its gradient needs,
backward turns g = ∂(whatever comes after)/∂C into ∂C/∂output. Both are computed in
float32 (or float64) whatever the output's dtype: under autocast it arrives in
bf16/fp16, and autocast does the same for PyTorch's own costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _at_least_float32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _one_hot(target: Tensor, like: Tensor) -> Tensor:
    """The one-hot labels, y_nk = 1 if k is digit n's label else 0, in ``like``'s dtype."""
    return F.one_hot(target, like.shape[1]).to(like.dtype)


def cross_entropy_forward(logits: Tensor, target: Tensor, label_smoothing: float = 0.0):
    """C = -(1/N) Σ_n Σ_k q_nk log p_nk, with p = softmax(logits) and q the one-hot label,
    softened by label smoothing ε to q = (1-ε)·onehot + ε/K."""
    logp = torch.log_softmax(_at_least_float32(logits), dim=1)
    nll = F.nll_loss(logp, target)  # -(1/N) Σ_n log p_n,label in one kernel
    # with smoothing, q also puts ε/K on every class: -(ε/K)(1/N) Σ_nk log p_nk
    loss = torch.lerp(nll, -logp.mean(), label_smoothing) if label_smoothing else nll
    return loss, (logp, target)


def cross_entropy_backward(g: Tensor, saved, label_smoothing: float = 0.0) -> Tensor:
    """∂C/∂z = (p - q) / N, p = softmax(z), q = (1-ε)·onehot + ε/K: softmax and log
    cancel, so no division by a small p and no overflow for large logits. Written
    p - ε/K - (1-ε)·onehot, the order that rounds like subtracting ε/K everywhere first."""
    logp, target = saved
    n, k = logp.shape
    p = logp.exp()
    return (p - label_smoothing / k - (1 - label_smoothing) * _one_hot(target, p)) * (g / n)


def quadratic_forward(output: Tensor, target: Tensor, label_smoothing: float = 0.0):
    """The cost of 3Blue1Brown's lesson: C = (1/N) Σ_n ½‖a_n - y_n‖², y_n the one-hot label.

    The lesson adds up the squared differences of every output neuron from what it
    should be and averages that over the examples; the ½ (Nielsen's convention in
    network.py) only rescales the learning rate and makes the gradient clean."""
    return _half_squared_error(output, _one_hot_desired(target, output))


def _half_squared_error(output: Tensor, desired: Tensor):
    """(1/N) Σ_n ½‖a_n - y_n‖² and what its gradient needs, a - y."""
    diff = _at_least_float32(output) - desired
    n = output.shape[0]
    return diff.pow(2).sum().mul(0.5 / n if n else math.nan), (diff,)


def quadratic_backward(g: Tensor, saved, label_smoothing: float = 0.0) -> Tensor:
    """∂C/∂a = (a - y) / N."""
    (diff,) = saved
    return diff * (g / diff.shape[0])


def quadratic_pm1_forward(output: Tensor, target: Tensor, label_smoothing: float = 0.0):
    """The quadratic cost against LeCun's ±1 code: y = +1 for the digit's own output neuron,
    -1 for the nine others (LeCun, Bottou, Orr & Müller 1998, "Efficient BackProp", section
    4.5: targets at the points where 1.7159 tanh(2z/3) bends most, ±1, so the outputs are
    driven neither into saturation nor only to its middle). C = (1/N) Σ_n ½‖a_n - y_n‖²;
    its gradient is quadratic_backward's."""
    return _half_squared_error(output, _pm1_desired(target, output))


def binary_cross_entropy_forward(logits: Tensor, target: Tensor, label_smoothing: float = 0.0):
    """Nielsen's cross-entropy cost (chapter 3, network2.py's CrossEntropyCost): every
    output neuron is its own sigmoid yes/no, a = σ(z), and
    C = -(1/N) Σ_n Σ_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)], y the one-hot label.
    Taken on the logits z, per neuron softplus(z) - y z: the same number, without the
    log of a saturated sigmoid."""
    z = _at_least_float32(logits)
    y = _one_hot(target, z)
    loss = (F.softplus(z) - y * z).sum() / z.shape[0]
    return loss, (torch.sigmoid(z).sub_(y),)


def binary_cross_entropy_backward(g: Tensor, saved, label_smoothing: float = 0.0) -> Tensor:
    """∂C/∂z = (σ(z) - y) / N: the output neuron's σ'(z) cancels, which is why Nielsen
    brings this cost in -- no learning slowdown for a saturated, wrong output."""
    (delta,) = saved
    return delta * (g / delta.shape[0])


@dataclass(frozen=True)
class Cost:
    name: str
    forward: Callable
    backward: Callable
    reference: Callable  # PyTorch's own ops, differentiated by autograd
    probabilities: Callable[[Tensor], Tensor]  # the outputs, read as class probabilities (for pictures, predict)
    # What the cost compares with its target, (output) -> read, and that target in the same
    # terms, (labels, output, label_smoothing) -> desired: the lesson's "what the output
    # should have been". -∂C_n/∂output is desired - read for every cost here.
    read: Callable[[Tensor], Tensor]
    desired: Callable[[Tensor, Tensor, float], Tensor]
    # whether those are probabilities in their own right (a softmax), or only scores that rank
    # the classes, normalised to sum to 1 (what the pictures then show is the output itself)
    calibrated: bool = False


def _normalised(scores: Tensor) -> Tensor:
    return scores / scores.sum(1, keepdim=True).clamp_min(1e-12)


# How each cost's outputs read as class probabilities: the softmax that cross-entropy
# scores; for the costs that score every output neuron on its own, each neuron's
# activation (its sigmoid, for Nielsen's cross-entropy), normalised to sum to 1.
def _softmax(out: Tensor) -> Tensor:
    return _at_least_float32(out).softmax(1)


def _each_activation(out: Tensor) -> Tensor:
    return _normalised(out.float().clamp_min(0))


def _sigmoid(out: Tensor) -> Tensor:
    return _at_least_float32(out).sigmoid()


def _each_sigmoid(out: Tensor) -> Tensor:
    return _normalised(_sigmoid(out))


def _itself(out: Tensor) -> Tensor:
    return out


def _one_hot_desired(target: Tensor, like: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return _one_hot(target, _at_least_float32(like))


def _pm1_desired(target: Tensor, like: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return _one_hot(target, _at_least_float32(like)).mul_(2).sub_(1)


def _smoothed_desired(target: Tensor, like: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy's target distribution q = (1-ε)·onehot + ε/K."""
    return _one_hot(target, _at_least_float32(like)).mul_(1 - label_smoothing).add_(label_smoothing / like.shape[1])


def _quadratic_reference(output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return quadratic_forward(output, target)[0]  # plain torch ops: autograd differentiates them


def _quadratic_pm1_reference(output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    code = F.one_hot(target, output.shape[1]).to(output.dtype) * 2 - 1
    return F.mse_loss(output, code, reduction="sum") / (2 * output.shape[0])


def _cross_entropy_reference(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def _binary_cross_entropy_reference(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    y = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[0]


COSTS: dict[str, Cost] = {
    c.name: c
    for c in (
        Cost(
            "cross_entropy",
            cross_entropy_forward,
            cross_entropy_backward,
            _cross_entropy_reference,
            _softmax,
            _softmax,
            _smoothed_desired,
            calibrated=True,
        ),
        Cost(
            "quadratic",
            quadratic_forward,
            quadratic_backward,
            _quadratic_reference,
            _each_activation,
            _itself,
            _one_hot_desired,
        ),
        Cost(
            "quadratic_pm1",
            quadratic_pm1_forward,
            quadratic_backward,
            _quadratic_pm1_reference,
            _each_activation,
            _itself,
            _pm1_desired,
        ),
        Cost(
            "binary_cross_entropy",
            binary_cross_entropy_forward,
            binary_cross_entropy_backward,
            _binary_cross_entropy_reference,
            _each_sigmoid,
            _sigmoid,
            _one_hot_desired,
        ),
    )
}


def least_cost(cost: str, label_smoothing: float, classes: int) -> float:
    """The smallest value a cost can take, where the outputs match the target exactly: 0,
    except for cross-entropy with label smoothing ε, whose target q = (1-ε)·onehot + ε/K is
    never one-hot. Its floor is q's entropy, -Σ_k q_k ln q_k: 0.500 for ε = 0.1, K = 10."""
    if cost != "cross_entropy" or not label_smoothing:
        return 0.0
    right, wrong = 1 - label_smoothing + label_smoothing / classes, label_smoothing / classes
    return -(right * math.log(right) + (classes - 1) * wrong * math.log(wrong))
