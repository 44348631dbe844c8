"""LeCun's optimiser: the second backward pass (the Gauss-Newton diagonal) against autograd,
one SDLM step against its formula, its settings, and a short run with it."""

import pytest
import torch
from torch.func import jacrev

from handprop import functional as HF
from handprop.gate import problems as config_problems
from handprop.module import DigitClassifier
from handprop.optim import SDLM
from handprop.train import train

from conftest import FAST, compose_config, float64_mlp

ACTIVATIONS = ["sigmoid", "tanh", "scaled_tanh", "relu", "gelu", "identity"]


def _network(sizes, activation, output_activation, seed=0):
    g = torch.Generator().manual_seed(seed)
    params, activations = float64_mlp(sizes, activation, output_activation, g)
    return torch.randn(7, sizes[0], generator=g, dtype=torch.float64), params, activations


def _by_autograd(x, cost, activations, params):
    """The same recursion, differentiated by PyTorch: each layer's h is the gradient, with
    respect to stand-ins V for its squared weights, of the output curvature times a
    'squared' copy of the network above it -- inputs squared, weights squared, and every
    f'(z)² (f' itself taken by autograd from the plain activation)."""
    n = len(activations)
    zs, inputs, a = [], [], x
    for i in range(n):
        inputs.append(a)
        z = a @ params[2 * i].t() + params[2 * i + 1]
        zs.append(z)
        a = HF.ACTIVATIONS[activations[i]].fn(z)
    fprime = []
    for i, z in enumerate(zs):
        z = z.detach().requires_grad_()
        (d,) = torch.autograd.grad(HF.ACTIVATIONS[activations[i]].fn(z).sum(), z)
        fprime.append(d)
    c = HF.output_curvature(cost, a.detach())
    h = []
    for i in range(n):
        v = params[2 * i].detach().square().requires_grad_()
        u = torch.zeros_like(params[2 * i + 1]).requires_grad_()  # the bias: an input of 1, squared 1
        s = fprime[i].square() * (inputs[i].detach().square() @ v.t() + u)
        for k in range(i + 1, n):
            s = fprime[k].square() * (s @ params[2 * k].detach().square().t())
        h += list(torch.autograd.grad((c * s).sum() / len(x), (v, u)))
    return h


@pytest.mark.parametrize("cost", list(HF.COSTS))
def test_each_costs_curvature_is_the_diagonal_of_its_hessian(cost):
    """∂²C_n/∂a_n² for one digit's cost, by autograd's Hessian of the cost's PyTorch
    reference (float64): the diagonal the second backward pass starts from."""
    g = torch.Generator().manual_seed(3)
    out = torch.randn(4, 5, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 3, 4, 1])
    for n in range(len(out)):
        hessian = torch.autograd.functional.hessian(
            lambda a, n=n: HF.COSTS[cost].reference(a[None], target[n : n + 1]), out[n]
        )
        torch.testing.assert_close(
            HF.output_curvature(cost, out[n : n + 1])[0], hessian.diagonal(), rtol=1e-12, atol=1e-14
        )


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cost", list(HF.COSTS))
def test_the_second_backward_pass_equals_autograd(activation, cost):
    x, params, activations = _network([5, 6, 4, 3], activation, "sigmoid" if cost == "quadratic" else "identity")
    ours = HF.gauss_newton_diagonal(x, cost, activations, params)
    reference = _by_autograd(x, cost, activations, params)
    for i, (h, r) in enumerate(zip(ours, reference)):
        assert h.shape == params[i].shape and (h >= 0).all()
        torch.testing.assert_close(h, r, rtol=1e-12, atol=1e-14)


def test_it_is_the_exact_gauss_newton_diagonal_where_a_weight_has_one_path():
    """diag(Jᵀ H J) averaged over the digits, J the Jacobian of the outputs in the weights
    (torch.func): for the quadratic cost H = I. Exact for the output layer; for a network
    with one output, also for the hidden layer (one path from each weight to the cost)."""
    for sizes, exact in (([5, 6, 3], (2, 3)), ([5, 6, 1], (0, 1, 2, 3))):
        x, params, activations = _network(sizes, "tanh", "sigmoid", seed=1)

        def outputs(p, x1, activations):
            out = x1[None]
            for i, name in enumerate(activations):
                out = HF.ACTIVATIONS[name].fn(out @ p[2 * i].t() + p[2 * i + 1])
            return out[0]

        diagonal = [torch.zeros_like(p) for p in params]
        for x1 in x:
            jacobians = jacrev(outputs)(params, x1, activations)
            for d, j in zip(diagonal, jacobians):
                d += j.square().sum(0) / len(x)  # Σ_o J_o² (H = I)
        ours = HF.gauss_newton_diagonal(x, "quadratic", activations, params)
        for i in exact:
            torch.testing.assert_close(ours[i], diagonal[i], rtol=1e-12, atol=1e-14)


def test_one_step_is_the_formula():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([0.1, -0.1], dtype=torch.float64))
    optimizer = SDLM([w, b], lr=0.01, mu=0.02, schedule=[[1, 0.05], [3, 0.002]])
    hw, hb = torch.tensor([[0.0, 1.0], [3.0, 0.5]], dtype=torch.float64), torch.tensor([2.0, 0.0], dtype=torch.float64)
    w.grad, b.grad = torch.tensor([[1.0, 1.0], [-2.0, 4.0]], dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    before = w.detach().clone(), b.detach().clone()
    optimizer.start_pass(3, {w: hw, b: hb})
    assert optimizer.param_groups[0]["lr"] == 0.002  # pass 3: the schedule's second rate
    optimizer.step()
    torch.testing.assert_close(w.detach(), before[0] - 0.002 * w.grad / (0.02 + hw), rtol=0, atol=0)
    torch.testing.assert_close(b.detach(), before[1] - 0.002 * b.grad / (0.02 + hb), rtol=0, atol=0)
    assert [optimizer.rate(e) for e in (1, 2, 3, 9)] == [0.05, 0.05, 0.002, 0.002]


def test_a_step_before_the_curvature_is_measured_is_refused():
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="start_pass"):
        SDLM([w]).step()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.mu=0", "optimizer.mu=0: must be a positive number"),
        ("optimizer.lr=-1", "optimizer.lr=-1: must be a positive number"),
        ("optimizer.samples=0", "optimizer.samples=0: must be a positive integer"),
        ("optimizer.schedule=[[0,0.1]]", "optimizer.schedule=[[0, 0.1]]: must be [first pass, lr] pairs"),
        ("optimizer.schedule=[[3,0.1],[1,0.2]]", "in increasing order"),
    ],
)
def test_bad_settings_are_named(tmp_path, override, message):
    problems = config_problems(compose_config("train", ["optimizer=sdlm", "scheduler=none", override], tmp_path))
    assert any(message in p for p in problems), problems


def test_a_schedule_of_its_own_refuses_another(tmp_path):
    problems = config_problems(compose_config("train", ["optimizer=sdlm"], tmp_path))
    assert any("use scheduler=none" in p for p in problems), problems
    assert config_problems(compose_config("train", ["optimizer=sdlm", "scheduler=none"], tmp_path)) == []


@pytest.mark.parametrize("chunk", [1, 8])
def test_a_run_with_sdlm_learns_and_sets_the_rate_pass_by_pass(tmp_path, chunk):
    overrides = [
        *FAST,
        "model.hidden=[32]",
        "optimizer=sdlm",
        "scheduler=none",
        "model.loss=quadratic",
        "model.output_activation=sigmoid",
        "model.label_smoothing=0",
        "optimizer.schedule=[[1,0.01],[2,0.004]]",
        "optimizer.samples=100",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=null",
        f"model.chunk={chunk}",
        "data.batch_size=64",
    ]
    metrics = train(compose_config("train", overrides, tmp_path / str(chunk)))
    assert metrics["val/acc"] > 0.6  # 3 passes over 4,000 digits
    ckpt = torch.load(tmp_path / str(chunk) / "checkpoints" / "last.ckpt", weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.004 and group["mu"] == 0.02
    assert all((s["h"] >= 0).all() for s in ckpt["optimizer_states"][0]["state"].values())


def test_lecuns_pixel_coding(tmp_path):
    """normalize=lecun: background -0.1 and ink 1.175, as LeCun et al. 1998 coded the digits."""
    model = DigitClassifier(hidden=[4], normalize="lecun")
    pixels = torch.tensor([[0.0, 1.0, 0.5]])
    torch.testing.assert_close(model.normalize(pixels), torch.tensor([[-0.1, 1.175, 0.5375]]))
    problems = config_problems(compose_config("train", ["model.normalize=yes"], tmp_path))
    assert any("model.normalize='yes': must be true (standardise), false" in p for p in problems), problems
