"""The MLP: shapes, validation, initialisations, and the manual/autograd switch."""

import math

import pytest
import torch

from handprop.nn import INITS, MLP, Linear


def test_mlp_layers_and_output_shape():
    mlp = MLP([784, 16, 16, 10], "sigmoid", output_activation="sigmoid")
    assert [(layer.in_features, layer.out_features, layer.activation) for layer in mlp.layers] == [
        (784, 16, "sigmoid"),
        (16, 16, "sigmoid"),
        (16, 10, "sigmoid"),
    ]
    assert sum(p.numel() for p in mlp.parameters()) == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    out = mlp(torch.rand(3, 784))
    assert out.shape == (3, 10) and (out > 0).all() and (out < 1).all()


def test_no_hidden_layer_is_logistic_regression():
    mlp = MLP([784, 10])
    assert len(mlp.layers) == 1 and mlp.layers[0].activation == "identity"


def test_switching_backward_keeps_the_parameters_and_the_output():
    torch.manual_seed(0)
    mlp = MLP([20, 30, 10], "tanh").eval()
    x = torch.randn(4, 20)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    out_manual = mlp(x)
    mlp.backward = "autograd"
    assert all(layer.backward == "autograd" for layer in mlp.layers)
    torch.testing.assert_close(mlp(x), out_manual)
    for k, v in mlp.state_dict().items():
        assert torch.equal(v, before[k])
    # the manual and the reference network share one state_dict format
    MLP([20, 30, 10], "tanh", backward="autograd").load_state_dict(before)


def test_manual_forward_records_our_function():
    mlp = MLP([5, 4, 3], "relu", dropout=0.5)
    out = mlp(torch.randn(2, 5))
    names = []
    node = out.grad_fn
    while node is not None:
        names.append(type(node).__name__)
        node = node.next_functions[0][0] if node.next_functions else None
    assert names == ["MLPFunctionBackward"]  # the whole network, dropout included, is one node
    layer = mlp.layers[0]
    assert type(layer(torch.randn(2, 5)).grad_fn).__name__ == "LinearActFunctionBackward"


@pytest.mark.parametrize("init", INITS)
def test_initialisations_have_their_documented_spread(init):
    torch.manual_seed(0)
    n_in, n_out = 400, 300
    layer = Linear(n_in, n_out, "relu", init=init)
    w_std, b_std = layer.weight.std().item(), layer.bias.std().item()
    expected_w = {
        "pytorch": 1 / math.sqrt(3 * n_in),  # U(-1/√n, 1/√n)
        "normal": 1.0,
        "normal_scaled": 1 / math.sqrt(n_in),
        "lecun_uniform": 2.4 / n_in / math.sqrt(3),  # U(-2.4/n, 2.4/n)
        "efficient_backprop": 1 / math.sqrt(n_in),  # U(-√(3/n), √(3/n))
        "xavier": math.sqrt(2 / (n_in + n_out)),
        "kaiming": math.sqrt(2 / n_in),
    }[init]
    expected_b = {
        "pytorch": 1 / math.sqrt(3 * n_in),
        "normal": 1.0,
        "normal_scaled": 1.0,
        "lecun_uniform": 2.4 / n_in / math.sqrt(3),
        "efficient_backprop": 1 / math.sqrt(n_in),
    }.get(init, 0.0)
    assert w_std == pytest.approx(expected_w, rel=0.05)
    assert b_std == pytest.approx(expected_b, rel=0.2, abs=1e-12)
