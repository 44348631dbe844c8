"""The math of backpropagation, written by hand.

A network is a chain of layers. Layer l turns the activations of the layer below,
a⁽ˡ⁻¹⁾, into its own:

    z⁽ˡ⁾ = a⁽ˡ⁻¹⁾ W⁽ˡ⁾ᵀ + b⁽ˡ⁾        (the weighted input of every neuron)
    a⁽ˡ⁾ = f(z⁽ˡ⁾)                     (its activation)

and the cost C compares the last layer's output with the label. Gradient descent
needs ∂C/∂w for every weight and ∂C/∂b for every bias. Backpropagation gets them all
in one sweep from the top down with the chain rule: each layer receives
g = ∂C/∂a⁽ˡ⁾ from the layer above and computes

    dz = g ⊙ f'(z)        how sensitive the cost is to each neuron's weighted input
    dW = dzᵀ a⁽ˡ⁻¹⁾       a change for every weight (summed over the mini-batch)
    db = Σ_batch dz        a change for every bias
    dx = dz W             ∂C/∂a⁽ˡ⁻¹⁾, handed down to the layer below

This file holds exactly that and nothing else: each activation with its derivative,
each cost with its gradient, and the `torch.autograd.Function`s whose `backward` is the
list above. PyTorch's autograd never differentiates these operations; it only calls
our `backward` in the right order. Every public function also takes
``backward="autograd"``: the same forward math in plain torch ops, differentiated by
PyTorch itself -- the reference the tests, the gradient audit and the benchmarks
compare against.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BACKWARDS = ("manual", "autograd")


# --------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class Activation:
    """A nonlinearity f and the chain-rule step through it.

    ``chain(g, saved)`` returns dz = g ⊙ f'(z). ``saved`` is what the forward pass kept
    for it, as named by ``saves``: the output a = f(z) when f' can be written from it
    (sigmoid, tanh, relu: the next layer keeps a alive anyway, so it costs no memory),
    the input z when it cannot (gelu), nothing when f' is constant (identity).
    """

    name: str
    fn: Callable[[Tensor], Tensor]  # plain torch ops, so it is also the autograd reference
    chain: Callable[[Tensor, Tensor | None], Tensor]
    saves: str  # "output" | "input" | "nothing"


def _identity(z: Tensor) -> Tensor:
    return z


def _identity_chain(g: Tensor, _: None) -> Tensor:  # f'(z) = 1
    return g


def _sigmoid_chain(g: Tensor, a: Tensor) -> Tensor:  # σ'(z) = σ(z)(1 - σ(z)) = a(1 - a)
    return g * a * (1 - a)


def _tanh_chain(g: Tensor, a: Tensor) -> Tensor:  # tanh'(z) = 1 - tanh²(z) = 1 - a²
    return g * (1 - a * a)


def _relu_chain(g: Tensor, a: Tensor) -> Tensor:
    # relu'(z) = 1 if z > 0 else 0, and a > 0 exactly when z > 0. At z = 0 the
    # derivative is taken as 0, PyTorch's convention; masked_fill (not g * mask) also
    # keeps a NaN or Inf gradient from leaking through a dead unit, as PyTorch does.
    return g.masked_fill(a <= 0, 0)


LEAKY_SLOPE = 0.01  # PyTorch's default negative_slope


def _leaky_relu(z: Tensor) -> Tensor:
    return F.leaky_relu(z, LEAKY_SLOPE)


def _leaky_relu_chain(g: Tensor, a: Tensor) -> Tensor:
    # f'(z) = 1 if z > 0 else slope (slope also at z = 0, PyTorch's convention);
    # with a positive slope, a > 0 exactly when z > 0.
    return torch.where(a > 0, g, g * LEAKY_SLOPE)


_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _gelu(z: Tensor) -> Tensor:
    return F.gelu(z)  # exact: z Φ(z), Φ the standard normal CDF


def _gelu_chain(g: Tensor, z: Tensor) -> Tensor:
    # gelu'(z) = Φ(z) + z φ(z): not a function of the output alone, so z is saved.
    cdf = 0.5 * (1 + torch.erf(z * _INV_SQRT_2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return g * (cdf + z * pdf)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("identity", _identity, _identity_chain, "nothing"),
        Activation("sigmoid", torch.sigmoid, _sigmoid_chain, "output"),
        Activation("tanh", torch.tanh, _tanh_chain, "output"),
        Activation("relu", torch.relu, _relu_chain, "output"),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_chain, "output"),
        Activation("gelu", _gelu, _gelu_chain, "input"),
    )
}


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(choices)}")


# --------------------------------------------------------------------------- layers


def first_order(backward):
    """Mark a hand-written backward as computing first derivatives only.

    With ``create_graph=True`` (double backward: Hessian-vector products, gradient
    penalties) PyTorch would differentiate the backward's own ops, and through the
    saved activation outputs that gives silently wrong second derivatives. Refuse
    instead, and say what works.
    """

    @functools.wraps(backward)
    def guarded(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "handprop's manual backward computes first derivatives only: double backward "
                "(create_graph=True, e.g. gradient penalties or Hessians) is not supported. "
                "Use backward='autograd' (model.backward=autograd) for that."
            )
        return backward(ctx, *grads)

    return guarded



class LinearActFunction(torch.autograd.Function):
    """a = f(x Wᵀ + b) for a mini-batch x (N × n_in), W (n_out × n_in), b (n_out).

    The backward is the four lines of the module docstring. It honours
    ``ctx.needs_input_grad``: the first layer's input is the image, which needs no
    gradient, so no dx is computed there.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
        act = ACTIVATIONS[activation]
        z = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
        a = act.fn(z)
        kept = {"output": a, "input": z}.get(act.saves)
        ctx.save_for_backward(x, weight, kept)
        ctx.act = act
        return a

    @staticmethod
    @first_order
    def backward(ctx, g: Tensor):
        x, weight, kept = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        dz = ctx.act.chain(g, kept)
        dx = dz @ weight if need_x else None
        dW = dz.t() @ x if need_w else None
        db = dz.sum(0) if need_b else None
        return dx, dW, db, None


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str = "identity",
    backward: str = "manual",
) -> Tensor:
    """One fully connected layer and its activation, a = f(x Wᵀ + b), x of shape (N, n_in)."""
    check_choice("activation", activation, ACTIVATIONS)
    if x.dim() != 2:
        raise ValueError(f"linear expects a batch of vectors (N, n_in), got shape {tuple(x.shape)}")
    if backward == "manual":
        return LinearActFunction.apply(x, weight, bias, activation)
    check_choice("backward", backward, BACKWARDS)
    return ACTIVATIONS[activation].fn(F.linear(x, weight, bias))


class DropoutFunction(torch.autograd.Function):
    """Inverted dropout with a given keep-mask m: y = x ⊙ m / (1 - p), dx = g ⊙ m / (1 - p).

    Only the boolean mask is saved (one byte per unit).
    """

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    @first_order
    def backward(ctx, g: Tensor):
        (keep,) = ctx.saved_tensors
        return g * keep * ctx.scale, None, None


def dropout(x: Tensor, p: float, training: bool = True, backward: str = "manual") -> Tensor:
    """Zero each unit with probability p while training, scaling the survivors by 1/(1-p)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p={p} is outside [0, 1)")
    if not training or p == 0:
        return x
    # One mask for both backward modes, so that with the same seed they match exactly.
    keep = torch.empty_like(x, dtype=torch.bool).bernoulli_(1 - p)
    if backward == "manual":
        return DropoutFunction.apply(x, keep, 1 / (1 - p))
    check_choice("backward", backward, BACKWARDS)
    return x * keep * (1 / (1 - p))


# --------------------------------------------------------------------------- costs


class CrossEntropyFunction(torch.autograd.Function):
    """C = -(1/N) Σ_n Σ_k q_nk log p_nk, with p = softmax(logits) and q the one-hot label,
    softened by label smoothing ε to q = (1-ε)·onehot + ε/K.

    Softmax and log are fused, so the gradient is simply ∂C/∂logits = (p - q) / N:
    no division by a small p, no overflow for large logits.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, label_smoothing: float) -> Tensor:
        logp = torch.log_softmax(logits, dim=1)
        n, k = logits.shape
        picked = logp.gather(1, target[:, None]).sum()
        loss = -((1 - label_smoothing) * picked + label_smoothing / k * logp.sum()) / n
        ctx.save_for_backward(logp, target)
        ctx.label_smoothing = label_smoothing
        return loss

    @staticmethod
    @first_order
    def backward(ctx, g: Tensor):
        logp, target = ctx.saved_tensors
        n, k = logp.shape
        eps = ctx.label_smoothing
        grad = logp.exp()  # p
        if eps:
            grad -= eps / k
        grad.scatter_add_(1, target[:, None], grad.new_full((n, 1), eps - 1))  # - (1-ε)·onehot
        return grad * (g / n), None, None


def cross_entropy(
    logits: Tensor, target: Tensor, label_smoothing: float = 0.0, backward: str = "manual"
) -> Tensor:
    """Mean cross-entropy of softmax(logits) against integer class labels."""
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing={label_smoothing} is outside [0, 1)")
    if backward == "manual":
        return CrossEntropyFunction.apply(logits, target, label_smoothing)
    check_choice("backward", backward, BACKWARDS)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


class QuadraticCostFunction(torch.autograd.Function):
    """The cost of 3Blue1Brown's lesson: C = (1/N) Σ_n ½‖a_n - y_n‖², y_n the one-hot label.

    The lesson adds up the squared differences of every output neuron from what it
    should be and averages that over the examples; the ½ (Nielsen's convention in
    network.py) only rescales the learning rate and makes the gradient clean:
    ∂C/∂a = (a - y) / N.
    """

    @staticmethod
    def forward(ctx, output: Tensor, target: Tensor) -> Tensor:
        diff = output - F.one_hot(target, output.shape[1]).to(output.dtype)
        ctx.save_for_backward(diff)
        return 0.5 * (diff * diff).sum() / output.shape[0]

    @staticmethod
    @first_order
    def backward(ctx, g: Tensor):
        (diff,) = ctx.saved_tensors
        return diff * (g / diff.shape[0]), None


def quadratic_cost(
    output: Tensor, target: Tensor, label_smoothing: float = 0.0, backward: str = "manual"
) -> Tensor:
    """Half the squared distance of the output from the one-hot label, averaged over the batch."""
    if label_smoothing:
        raise ValueError("label_smoothing applies to the cross_entropy cost only")
    if backward == "manual":
        return QuadraticCostFunction.apply(output, target)
    check_choice("backward", backward, BACKWARDS)
    diff = output - F.one_hot(target, output.shape[1]).to(output.dtype)
    return 0.5 * (diff * diff).sum() / output.shape[0]


LOSSES: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": cross_entropy,
    "quadratic": quadratic_cost,
}
