"""The activations: each nonlinearity f with the chain-rule step through it, dz = g ⊙ f'(z)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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


# Each chain rule is dz = g ⊙ f'(z), written as the formula, from what the forward pass
# kept. sigmoid's and relu's multiply in the order PyTorch's fused backward kernels do
# (aten.sigmoid_backward computes g·(1 - a)·a), so their numbers are bitwise those of
# torch.sigmoid's and torch.relu's own backward; tanh's agrees with its kernel to float
# precision. tests/test_functional.py checks every one against the kernels, autograd
# and finite differences.


def _sigmoid_chain(g: Tensor, a: Tensor) -> Tensor:  # σ'(z) = σ(z)(1 - σ(z)) = a(1 - a)
    return g * (1 - a) * a


def _tanh_chain(g: Tensor, a: Tensor) -> Tensor:  # tanh'(z) = 1 - tanh²(z) = 1 - a²
    # 1 - a² written (1 - a)(1 + a): near saturation a·a rounds to a number close to 1,
    # and 1 - a·a would keep only its rounding error; 1 - a is exact there
    return g * ((1 - a) * (1 + a))


def _relu_chain(g: Tensor, a: Tensor) -> Tensor:
    # relu'(z) = 1 if z > 0 else 0 (0 at z = 0 too, PyTorch's convention); a > 0 exactly
    # when z > 0, and a = relu(z) >= 0, so relu'(z) = sign(a): dz = g where the neuron is
    # on, 0 where it is off. (sign, a float op, runs at the speed of the fused kernel's one
    # pass; a boolean mask, (a > 0), costs several times as much on a CPU.)
    return g * a.sign()


# LeCun et al. 1998 (Gradient-based learning applied to document recognition), Appendix A:
# the squashing function f(z) = A tanh(S z), A = 1.7159, S = 2/3, chosen so that f(±1) = ±1,
# its second derivative peaks at ±1, and the gain near 0 is close to 1.
LECUN_A, LECUN_S = 1.7159, 2 / 3


def _scaled_tanh(z: Tensor) -> Tensor:
    return LECUN_A * torch.tanh(LECUN_S * z)


def _scaled_tanh_chain(g: Tensor, z: Tensor) -> Tensor:
    # f'(z) = A S (1 - tanh²(S z)). From the input z, not the output a = A tanh(S z):
    # a is tanh rounded once more, and near saturation 1 - (a/A)² loses most of its
    # digits to that rounding, where PyTorch's tanh backward keeps them all.
    t = torch.tanh(z * LECUN_S)
    return (1 - t * t) * g * (LECUN_A * LECUN_S)


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
        Activation("scaled_tanh", _scaled_tanh, _scaled_tanh_chain, "input"),
        Activation("relu", torch.relu, _relu_chain, "output"),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_chain, "output"),
        Activation("gelu", _gelu, _gelu_chain, "input"),
    )
}
