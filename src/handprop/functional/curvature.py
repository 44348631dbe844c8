"""The second backward pass: how curved the cost is along every weight, after LeCun.

LeCun, Bottou, Bengio & Haffner 1998 ("Gradient-based learning applied to document
recognition", Appendix C) and LeCun, Bottou, Orr & Müller 1998 ("Efficient BackProp",
section 9.1) give each weight its own learning rate, η / (μ + h), where h estimates the
second derivative of the cost along that weight. h comes from a second backward pass,
shaped like the first but with every factor squared and the cost's own curvature
where the first starts from its gradient (the Gauss-Newton approximation: the terms
with f'' are dropped, which keeps every h >= 0):

    at the output      ∂²C/∂a²  = the cost's curvature in its outputs: 1 for ½‖a − y‖² (any target),
                                  p(1 − p) for the softmax's cross-entropy (its diagonal)
    at every layer     ∂²C/∂z²  = ∂²C/∂a² ⊙ f'(z)²
                       h(W)     = (∂²C/∂z²)ᵀ x²       (x: the layer's input)
                       h(b)     = Σ_batch ∂²C/∂z²
                       ∂²C/∂x²  = ∂²C/∂z² W²          (handed to the layer below)

(the first pass's four lines, dz = g ⊙ f'(z), dW = dzᵀ x, db = Σ dz, dx = dz W, with
squares). The sum over the units above drops the cross terms between them, as LeCun's
does: for the output layer, and for any weight that reaches the cost by one path only,
h is exactly the diagonal of the Gauss-Newton matrix Jᵀ H J. Averaged over the batch,
as the cost is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import ACTIVATIONS
from .backprop import every_parameter, forward_layers


def output_curvature(cost: str, out: Tensor) -> Tensor:
    """∂²C_n/∂a_n², the diagonal, for each digit n's own cost: how the cost curves in each
    output (the Gauss-Newton matrix's middle factor, its diagonal)."""
    if cost in ("quadratic", "quadratic_pm1"):  # C_n = ½‖a - y‖², whatever the target
        return torch.ones_like(out)
    if cost == "cross_entropy":  # C_n = -log softmax(a)_y: Hessian diag(p) - p pᵀ
        p = out.softmax(1)
        return p * (1 - p)
    if cost == "binary_cross_entropy":  # each output a sigmoid's logit: σ(a)(1 - σ(a))
        s = out.sigmoid()
        return s * (1 - s)
    raise ValueError(f"no curvature for the cost {cost!r}")


@torch.no_grad()
def gauss_newton_diagonal(x: Tensor, cost: str, activations: tuple, params) -> list[Tensor]:
    """h for every weight and bias of the MLP (``params``: weight and bias of each layer in
    turn, as ``forward_layers`` takes them), averaged over the digits ``x``: the second
    backward pass of the module docstring. No dropout: the network as it is evaluated."""
    n = len(activations)
    out, saved = forward_layers(x, params, activations, (None,) * n, every_parameter(n))  # x and W kept
    d2a = output_curvature(cost, out)
    h = [None] * (2 * n)
    for i in range(n - 1, -1, -1):
        inputs, weight, kept, _ = saved[i]
        chain = ACTIVATIONS[activations[i]].chain
        d2z = chain(chain(d2a, kept), kept)  # ∂²C/∂a² ⊙ f'(z)²: the chain rule's factor, twice
        h[2 * i] = d2z.t() @ inputs.square() / len(x)
        h[2 * i + 1] = d2z.sum(0) / len(x)
        if i:
            d2a = d2z @ weight.square()
    return h
