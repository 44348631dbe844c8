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
``torch.autograd.Function``s whose ``backward`` is the list above (``backprop.py``) and
the functions that call them (``calls.py``), the
same sweep with its inside kept, the nudges of every neuron and the change asked of every
weight (``nudges.py``), and LeCun's second backward pass, the cost's curvature along every
weight (``curvature.py``).
PyTorch's autograd never differentiates these operations; it only calls
our `backward` in the right order. Nothing here checks a setting or talks to a user
(the config gate, ``handprop.gate``, does that before a run), nor changes a setting of
the process: the package imports nothing else of handprop. Every public function also takes
``backward="autograd"``: the same forward math in plain torch ops, differentiated by
PyTorch itself -- the reference the tests, the gradient audit and the benchmarks
compare against.
"""

from .activations import ACTIVATIONS, LEAKY_SLOPE, Activation
from .backprop import BACKWARDS, CostFunction, LinearActFunction, MLPFunction
from .calls import binary_cross_entropy, cost, cross_entropy, dropout_mask, dropout_masks, linear, mlp, quadratic_cost
from .costs import COSTS, Cost, least_cost
from .curvature import gauss_newton_diagonal, output_curvature
from .nudges import Nudges, nudges, ranking

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
    "cost",
    "gauss_newton_diagonal",
    "output_curvature",
    "least_cost",
    "cross_entropy",
    "dropout_mask",
    "dropout_masks",
    "linear",
    "mlp",
    "nudges",
    "ranking",
    "quadratic_cost",
]
