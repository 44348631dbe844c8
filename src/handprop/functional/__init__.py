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

This package holds exactly that and nothing else: each activation with its derivative
(``activations.py``), each cost with its gradient (``costs.py``), the
``torch.autograd.Function``s whose ``backward`` is the list above (``backprop.py``), the
same sweep with its inside kept, the nudges of every neuron and the change asked of every
weight (``nudges.py``), and LeCun's second backward pass, the cost's curvature along every
weight (``curvature.py``).
PyTorch's autograd never differentiates these operations; it only calls
our `backward` in the right order. Every public function also takes
``backward="autograd"``: the same forward math in plain torch ops, differentiated by
PyTorch itself -- the reference the tests, the gradient audit and the benchmarks
compare against.
"""

import torch

from .activations import ACTIVATIONS, LEAKY_SLOPE, Activation
from .backprop import (
    BACKWARDS,
    CostFunction,
    LinearActFunction,
    MLPFunction,
    binary_cross_entropy,
    cost,
    cross_entropy,
    dropout_mask,
    dropout_masks,
    linear,
    mlp,
    quadratic_cost,
)
from .costs import COSTS, Cost, check_cost, describe_cost, least_cost
from .curvature import gauss_newton_diagonal, output_curvature
from .nudges import Nudges, nudges

# Numbers closer to 0 than float32's smallest normal (1.2e-38) are denormals, and a CPU
# computes with them many times slower. Training makes them: Adam's running mean of a
# gradient that has become 0 (a dead ReLU, a weight from a pixel that is never ink)
# shrinks by beta1 every step down through the denormals, and the optimiser step slows
# epoch after epoch. Flushed to 0 they cost nothing, and no number changes by more than
# 1e-38. The CPU's flag belongs to each thread, and a thread inherits it from the thread
# that starts it: set here, when handprop's math is imported and before any tensor work
# starts PyTorch's pool of CPU threads, it holds in all of them.
torch.set_flush_denormal(True)

__all__ = [
    "ACTIVATIONS",
    "BACKWARDS",
    "COSTS",
    "LEAKY_SLOPE",
    "Activation",
    "Cost",
    "CostFunction",
    "LinearActFunction",
    "MLPFunction",
    "Nudges",
    "binary_cross_entropy",
    "check_cost",
    "cost",
    "describe_cost",
    "gauss_newton_diagonal",
    "output_curvature",
    "least_cost",
    "cross_entropy",
    "dropout_mask",
    "dropout_masks",
    "linear",
    "mlp",
    "nudges",
    "quadratic_cost",
]
