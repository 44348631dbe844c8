"""What one digit asks of every weight and bias (functional.nudges): the training's own
sweep with its inside kept, equal to autograd's derivatives."""

import pytest
import torch

from handprop import functional as HF

from conftest import float64_mlp

COSTS = list(HF.COSTS)


def _network(sizes, activation, output_activation, seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    params, activations = float64_mlp(sizes, activation, output_activation, g)
    x = torch.rand(n, sizes[0], generator=g, dtype=torch.float64)
    target = torch.randint(0, sizes[-1], (n,), generator=g)
    return x, target, list(params), activations


def _by_autograd(x, target, cost, smoothing, activations, params):
    """-∂C/∂(each layer's activation) and -∂C/∂(each weight and bias), PyTorch's own
    forward ops differentiated by autograd."""
    params = [p.clone().requires_grad_() for p in params]
    acts, a = [], x
    for i, name in enumerate(activations):
        a = HF.ACTIVATIONS[name].fn(a @ params[2 * i].t() + params[2 * i + 1])
        a.retain_grad()
        acts.append(a)
    HF.COSTS[cost].reference(a, target, smoothing).backward()
    return [-a.grad for a in acts], [-p.grad for p in params], acts


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "scaled_tanh"])
@pytest.mark.parametrize("digits", [1, 5])
def test_the_nudges_and_the_changes_are_autograds(cost, activation, digits):
    out_act = "sigmoid" if cost == "quadratic" else "scaled_tanh" if cost == "quadratic_pm1" else "identity"
    x, target, params, activations = _network([12, 7, 5, 4], activation, out_act, n=digits)
    smoothing = 0.1 if cost == "cross_entropy" else 0.0
    ours = HF.nudges(x, target, cost, smoothing, activations, params)
    pulls, changes, acts = _by_autograd(x, target, cost, smoothing, activations, params)
    for mine, theirs in zip([*ours.pulls, *ours.changes, *ours.activations], [*pulls, *changes, *acts]):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cost", COSTS)
def test_the_output_nudge_is_desired_minus_read(cost):
    """-∂C_n/∂output = what the cost wants minus what it reads, per digit (the cost is the
    mean over the N digits): 'this neuron should go up by as much as it is too low'."""
    x, target, params, activations = _network([12, 7, 4], "sigmoid", "sigmoid" if cost == "quadratic" else "identity")
    smoothing = 0.2 if cost == "cross_entropy" else 0.0
    ours = HF.nudges(x, target, cost, smoothing, activations, params)
    torch.testing.assert_close(ours.pulls[-1] * len(x), ours.desired - ours.read, rtol=1e-12, atol=1e-14)
    assert ours.desired.shape == ours.read.shape == (len(x), 4)


def test_the_mini_batch_average_is_the_gradient_the_optimiser_steps_on():
    """The changes for a mini-batch are, bit for bit, minus the gradient of the training
    step (MLPFunction's backward, called by the autograd engine), and the mean of the
    changes each digit asks on its own."""
    x, target, params, activations = _network([784, 16, 16, 10], "sigmoid", "sigmoid", n=10)
    x, params = x.float(), [p.float() for p in params]
    batch = HF.nudges(x, target, "quadratic", 0.0, activations, params)
    leaves = [p.clone().requires_grad_() for p in params]
    _, loss = HF.mlp(x, list(zip(leaves[0::2], leaves[1::2])), activations, target=target, cost="quadratic")
    grads = torch.autograd.grad(loss, leaves)
    for change, grad in zip(batch.changes, grads):
        assert torch.equal(change, -grad)
    assert torch.equal(batch.cost, loss)
    each = [HF.nudges(x[n : n + 1], target[n : n + 1], "quadratic", 0.0, activations, params) for n in range(10)]
    for k, change in enumerate(batch.changes):
        torch.testing.assert_close(change, torch.stack([e.changes[k] for e in each]).mean(0), rtol=1e-5, atol=1e-7)


def test_a_first_layer_change_is_the_digit_itself_scaled():
    """For one digit the change asked of hidden neuron j's 784 incoming weights is the digit's
    pixels times that neuron's own nudge -∂C/∂z_j: "neurons that fire together wire together"."""
    x, target, params, activations = _network([784, 16, 10], "relu", "identity", n=1)
    ours = HF.nudges(x, target, "cross_entropy", 0.0, activations, params)
    first = ours.changes[0]  # (16, 784)
    dz = ours.changes[1]  # -∂C/∂b_j = -∂C/∂z_j
    torch.testing.assert_close(first, dz[:, None] * x, rtol=1e-12, atol=1e-14)
