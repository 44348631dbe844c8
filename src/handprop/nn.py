"""The network: fully connected layers built on the hand-written math of functional/."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import functional as HF

INITS = ("pytorch", "normal", "normal_scaled", "lecun_uniform", "efficient_backprop", "xavier", "kaiming")
# the inits that draw W and b alike from U(-bound, bound): the bound for a fan-in n_in
UNIFORM_BOUNDS = {
    "pytorch": lambda n_in: 1 / math.sqrt(n_in),
    "lecun_uniform": lambda n_in: 2.4 / n_in,
    "efficient_backprop": lambda n_in: math.sqrt(3 / n_in),
}


class Linear(nn.Module):
    """A fully connected layer with its activation, a = f(x Wᵀ + b).

    ``backward`` picks who differentiates it: "manual" (our backward pass) or
    "autograd" (PyTorch's, the reference). Both use the same parameters, so a trained
    layer can be switched and compared at any time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "identity",
        init: str = "pytorch",
        backward: str = "manual",
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.backward = backward
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "pytorch") -> None:
        """Initial weights and biases.

        pytorch:       nn.Linear's default, W and b ~ U(-1/√n_in, 1/√n_in)
        normal:        W and b ~ N(0, 1)            (Nielsen, network.py)
        normal_scaled: W ~ N(0, 1/n_in), b ~ N(0, 1) (Nielsen, network2.py)
        lecun_uniform: W and b ~ U(-2.4/n_in, 2.4/n_in) (LeCun et al. 1998, Appendix A;
                       n_in, not √n_in: the paper's own rule for its scaled tanh, written
                       for LeNet-5's fan-ins of 25 to 400)
        efficient_backprop: W and b ~ U(-√(3/n_in), √(3/n_in)), standard deviation
                       1/√n_in, so that a unit's weighted input has about unit variance
                       whatever its fan-in (LeCun, Bottou, Orr & Müller 1998, "Efficient
                       BackProp", section 4.6; Keras's lecun_uniform)
        xavier:        Glorot uniform W, b = 0
        kaiming:       He normal W (fan-in, for relu), b = 0
        """
        w, b, n_in = self.weight, self.bias, self.in_features
        with torch.no_grad():
            if init in UNIFORM_BOUNDS:  # W and b both ~ U(-bound, bound)
                bound = UNIFORM_BOUNDS[init](n_in)
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)
            elif init == "normal":
                w.normal_()
                b.normal_()
            elif init == "normal_scaled":
                w.normal_(0, 1 / math.sqrt(n_in))
                b.normal_()
            elif init == "xavier":
                nn.init.xavier_uniform_(w)
                b.zero_()
            elif init == "kaiming":
                nn.init.kaiming_normal_(w, nonlinearity="relu")
                b.zero_()
            else:  # (the config gate names a config's; this is for code that builds a layer itself)
                raise ValueError(f"init={init!r}: not one of {', '.join(INITS)}")

    def forward(self, x: Tensor, dropout: float = 0.0) -> Tensor:
        return HF.linear(x, self.weight, self.bias, self.activation, dropout, self.backward)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={self.activation}"


class MLP(nn.Module):
    """A multilayer perceptron: ``sizes`` = [inputs, hidden..., outputs].

    ``MLP([784, 16, 16, 10], "sigmoid", output_activation="sigmoid")`` is the network
    of 3Blue1Brown's lesson. Dropout (probability ``dropout``) follows every hidden
    layer while training. With ``backward="manual"`` the whole network runs as one
    ``functional.MLPFunction`` (our forward and backward loops over the layers); each
    ``Linear`` holds its layer's parameters and also works on its own.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        output_activation: str = "identity",
        dropout: float = 0.0,
        init: str = "pytorch",
        backward: str = "manual",
    ):
        super().__init__()
        self.sizes = sizes = list(sizes)
        self.dropout = dropout
        self.layers = nn.ModuleList(Linear(n_in, n_out, activation, init) for n_in, n_out in zip(sizes, sizes[1:-1]))
        self.layers.append(Linear(sizes[-2], sizes[-1], output_activation, init))
        self.backward = backward

    @property
    def backward(self) -> str:
        return self._backward

    @backward.setter
    def backward(self, mode: str) -> None:
        """Switch every layer between our backward pass and PyTorch's (same parameters)."""
        self._backward = mode
        for layer in self.layers:
            layer.backward = mode

    @property
    def activations(self) -> tuple[str, ...]:
        """Every layer's activation, bottom to top."""
        return tuple(layer.activation for layer in self.layers)

    def weights_and_biases(self) -> list[Tensor]:
        """Weight and bias of each layer in turn, bottom to top: the order the functional
        forward and backward sweeps take them in."""
        return [t for layer in self.layers for t in (layer.weight, layer.bias)]

    def forward(
        self, x: Tensor, target: Tensor | None = None, cost: str = "cross_entropy", label_smoothing: float = 0.0
    ):
        """The output for a batch x; with ``target``, (output, cost) -- in manual mode the
        network and its cost are one autograd node."""
        return HF.mlp(
            x,
            [(layer.weight, layer.bias) for layer in self.layers],
            self.activations,
            self.dropout if self.training else 0.0,
            self._backward,
            target,
            cost,
            label_smoothing,
        )
