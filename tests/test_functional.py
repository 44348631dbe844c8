"""The hand-written backward passes against finite differences and against PyTorch's autograd."""

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from handprop import functional as HF
from handprop.nn import MLP

ACTIVATIONS = list(HF.ACTIVATIONS)
LOSSES = list(HF.COSTS)


def _mlp_loss(mlp, x, y, loss, backward, fused=False):
    """The cost of an MLP on a batch: with ``fused``, network and cost in one call (one
    autograd node in manual mode), else the cost applied to the network's output."""
    mlp.backward = backward
    if fused:
        return mlp(x, y, loss)[1]
    return HF.cost(loss, mlp(x), y, backward=backward)


def _batch(n=6, n_in=5, classes=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("fused", [False, True], ids=["separate_cost", "fused_cost"])
@pytest.mark.parametrize("activation,loss", list(itertools.product(ACTIVATIONS, LOSSES)))
def test_gradcheck_whole_mlp(activation, loss, fused):
    """Finite differences in float64 agree with our backward through a whole 3-layer MLP,
    for the parameters of every layer and for the input."""
    torch.manual_seed(0)
    out_act = "sigmoid" if loss == "quadratic" else "identity"
    mlp = MLP([5, 7, 6, 4], activation, output_activation=out_act).double()
    x, y = _batch()
    x.requires_grad_(True)
    names = [n for n, _ in mlp.named_parameters()]

    def loss_of(x, *params):  # the loss as a function of the input and every parameter
        if fused:
            return torch.func.functional_call(mlp, dict(zip(names, params)), (x, y, loss))[1]
        out = torch.func.functional_call(mlp, dict(zip(names, params)), (x,))
        return HF.cost(loss, out, y)

    ps = [p.detach().clone().requires_grad_(True) for p in mlp.parameters()]
    assert torch.autograd.gradcheck(loss_of, (x, *ps), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_layer_without_bias(activation):
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: HF.linear(x, w, None, activation), (x, w))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_gradcheck_cross_entropy_label_smoothing(label_smoothing):
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda z: HF.cross_entropy(z, y, label_smoothing), (logits,))


@pytest.mark.parametrize("fused", [False, True], ids=["separate_cost", "fused_cost"])
@pytest.mark.parametrize("activation,loss", list(itertools.product(ACTIVATIONS, LOSSES)))
def test_manual_equals_autograd_float32(activation, loss, fused):
    """Same parameters, same batch: the same loss and the same gradients in float32."""
    torch.manual_seed(0)
    out_act = "sigmoid" if loss == "quadratic" else "identity"
    mlp = MLP([20, 32, 16, 10], activation, output_activation=out_act)
    x, y = _batch(n=64, n_in=20, classes=10, dtype=torch.float32)
    grads, losses = {}, {}
    for backward in HF.BACKWARDS:
        mlp.zero_grad()
        xi = x.clone().requires_grad_(True)
        losses[backward] = _mlp_loss(mlp, xi, y, loss, backward, fused)
        losses[backward].backward()
        grads[backward] = [xi.grad] + [p.grad.clone() for p in mlp.parameters()]
    torch.testing.assert_close(losses["manual"], losses["autograd"])
    for gm, ga in zip(grads["manual"], grads["autograd"]):
        torch.testing.assert_close(gm, ga, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use", ["output_and_cost", "output_only"])
def test_fused_cost_keeps_the_output_differentiable(use):
    """With the cost inside the network's node, the output is still a differentiable output:
    a term on it adds its gradient to the cost's, or stands alone."""
    torch.manual_seed(0)
    mlp = MLP([6, 5, 4], "tanh")
    x, y = torch.randn(3, 6), torch.tensor([0, 3, 1])
    grads = {}
    for backward in HF.BACKWARDS:
        mlp.backward = backward
        out, loss = mlp(x, y, "cross_entropy", 0.1)
        total = (loss + (out**2).sum()) if use == "output_and_cost" else (out**2).sum()
        grads[backward] = torch.autograd.grad(total, list(mlp.parameters()))
    for gm, ga in zip(grads["manual"], grads["autograd"]):
        torch.testing.assert_close(gm, ga)


def test_label_smoothing_matches_pytorch():
    logits = torch.randn(32, 10, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    ours = HF.cross_entropy(logits, y, 0.1)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, y, label_smoothing=0.1)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_derivative_matches_autograd(activation):
    """Each activation's chain rule on its own, including the awkward points: exactly 0
    (relu's kink) and saturation (|z| = 40, where sigmoid and tanh are flat)."""
    act = HF.ACTIVATIONS[activation]
    z = torch.tensor([-40.0, -3.0, -0.5, 0.0, 0.5, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    a = act.fn(z)
    g = torch.linspace(-1, 1, len(z), dtype=torch.float64)
    (expected,) = torch.autograd.grad(a, z, g)
    saved = {"output": a.detach(), "input": z.detach(), "nothing": None}[act.saves]
    torch.testing.assert_close(act.chain(g, saved), expected)


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [False, True], ids=["separate_cost", "fused_cost"])
@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_input_layer_computes_no_dx(input_requires_grad, fused):
    """Backward of an L-layer MLP runs one matmul per dW and one per dx handed down:
    2L - 1 when the input (the image) needs no gradient, 2L when it does."""
    torch.manual_seed(0)
    mlp = MLP([12, 8, 8, 3], "relu")
    x = torch.randn(5, 12, requires_grad=input_requires_grad)
    loss = _mlp_loss(mlp, x, torch.tensor([0, 1, 2, 0, 1]), "cross_entropy", "manual", fused)
    with _CountMatmuls() as counter:
        loss.backward()
    n_layers = len(mlp.layers)
    assert counter.count == 2 * n_layers - (0 if input_requires_grad else 1)
    assert (x.grad is not None) == input_requires_grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dropout_inside_the_layer(activation):
    """Dropout fused into the layer: kept units are scaled by 1/(1-p), dropped ones pass no
    gradient, and the manual backward matches the reference on the same mask."""
    torch.manual_seed(0)
    x = torch.randn(300, 20, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 20, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, dtype=torch.float64, requires_grad=True)
    outs, grads = {}, {}
    for backward in HF.BACKWARDS:
        torch.manual_seed(3)
        outs[backward] = HF.linear(x, w, b, activation, dropout=0.3, backward=backward)
        grads[backward] = torch.autograd.grad((outs[backward] ** 2).sum(), (x, w, b))
    full = HF.ACTIVATIONS[activation].fn(x @ w.t() + b)
    torch.manual_seed(3)
    mask = HF.dropout_mask(full.shape, 0.3)
    kept = mask > 0
    assert set(mask.unique().tolist()) == {0.0, torch.tensor(1 / 0.7).item()}  # 1/(1-p) or 0
    assert 0.65 < kept.double().mean() < 0.75
    torch.testing.assert_close(outs["manual"], torch.where(kept, full / 0.7, 0))
    torch.testing.assert_close(outs["manual"], outs["autograd"])
    for gm, ga in zip(grads["manual"], grads["autograd"]):
        torch.testing.assert_close(gm, ga)

    def same_mask_every_call(x, w, b):
        torch.manual_seed(7)
        return HF.linear(x, w, b, activation, dropout=0.3)

    assert torch.autograd.gradcheck(same_mask_every_call, (x[:3], w[:10], b[:10]))  # (30 units: ~20 dropped)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_second_derivative_raises_instead_of_lying(activation):
    """Double backward through the manual pass would be silently wrong: it must refuse."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first derivatives only.*backward='autograd'"):
        torch.autograd.grad(HF.linear(x, w, None, activation).sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.gradgradcheck(lambda z: HF.cross_entropy(z, torch.tensor([0, 1, 0])), (x,))
    # the reference path supports it
    torch.autograd.gradgradcheck(lambda w: HF.linear(x, w, None, activation, backward="autograd"), (w,))


def test_a_batch_that_is_not_of_vectors_is_named():
    """The config gate checks every setting before a run (tests/test_gate_values.py); the math
    checks only what a caller's tensors can get wrong."""
    with pytest.raises(ValueError, match=r"shape \(2, 3, 1\)"):
        HF.linear(torch.randn(2, 3, 1), torch.randn(4, 3))


# --------------------------------------------------------------------------- edge cases


def _layer_grads(x, w, b, activation, backward, g=None):
    """Output and gradients (x if it requires grad, W, b) of one layer for an upstream g."""
    out = HF.linear(x, w, b, activation, backward=backward)
    g = torch.ones_like(out) if g is None else g
    inputs = [t for t in (x, w, b) if t.requires_grad]
    return out, torch.autograd.grad(out, inputs, g, allow_unused=True)


def _assert_layer_matches_reference(x, w, b, activation, g=None, **tol):
    out_m, grads_m = _layer_grads(x, w, b, activation, "manual", g)
    out_a, grads_a = _layer_grads(x, w, b, activation, "autograd", g)
    torch.testing.assert_close(out_m, out_a, equal_nan=True, **tol)
    for gm, ga in zip(grads_m, grads_a):
        torch.testing.assert_close(gm, ga, equal_nan=True, **tol)


def _params(n_in=6, n_out=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(n_out, generator=g, dtype=dtype).requires_grad_()
    return w, b


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 0])
def test_batch_of_one_and_empty_batch(activation, n):
    w, b = _params()
    x = torch.randn(n, 6, requires_grad=True)
    _assert_layer_matches_reference(x, w, b, activation)
    if n == 0:  # an empty batch contributes nothing
        _, (gx, gw, gb) = _layer_grads(x, w, b, activation, "manual")
        assert gx.shape == (0, 6) and not gw.any() and not gb.any()


@pytest.mark.parametrize("loss", LOSSES)
def test_costs_on_an_empty_batch_match_pytorch(loss):
    logits = torch.randn(0, 10, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    manual, reference = HF.cost(loss, logits, y), HF.cost(loss, logits, y, backward="autograd")
    assert torch.isnan(manual) and torch.isnan(reference)  # mean over nothing
    assert torch.autograd.grad(manual, logits)[0].shape == (0, 10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_non_contiguous_inputs(activation):
    w, b = _params()
    base = torch.randn(6, 9)
    for x in (base.t()[:, :], torch.randn(9, 12)[:, ::2], torch.randn(20, 6)[3:12]):
        x = x.detach().requires_grad_()
        assert x.shape == (9, 6)
        _assert_layer_matches_reference(x, w, b, activation)
    w_t = torch.randn(6, 5).t().requires_grad_()  # a transposed weight
    _assert_layer_matches_reference(torch.randn(4, 6), w_t, b, activation)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "scaled_tanh"])
def test_saturated_units(activation):
    """|z| > 30: sigmoid and tanh are flat, the derivative is 0 (or tiny), never NaN."""
    w = torch.eye(4).requires_grad_()
    b = torch.zeros(4, requires_grad=True)
    x = torch.tensor([[35.0, -35.0, 80.0, -80.0]], requires_grad=True)
    _assert_layer_matches_reference(x, w, b, activation)
    _, grads = _layer_grads(x, w, b, activation, "manual")
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().max() < 1e-12


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_exactly_at_the_kink(activation):
    """z = 0 exactly: relu'(0) = 0 and leaky_relu'(0) = slope, PyTorch's convention."""
    w = torch.eye(3).requires_grad_()
    b = torch.zeros(3, requires_grad=True)
    x = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    _assert_layer_matches_reference(x, w, b, activation, rtol=0, atol=0)
    _, (gx, _, _) = _layer_grads(x, w, b, activation, "manual")
    at_zero = 0.0 if activation == "relu" else HF.LEAKY_SLOPE
    assert gx[0, 0].item() == pytest.approx(at_zero)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float64(activation):
    w, b = _params(dtype=torch.float64)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    out, grads = _layer_grads(x, w, b, activation, "manual")
    assert out.dtype == torch.float64 and all(g.dtype == torch.float64 for g in grads)
    _assert_layer_matches_reference(x, w, b, activation, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_shared_parameters_accumulate(activation):
    """One W used by two calls in one graph (a weight-tied layer applied twice): its
    gradient is the sum of both uses, as with the reference."""
    w, b = _params(n_in=5, n_out=5)
    x = torch.randn(4, 5)
    grads = {}
    for backward in HF.BACKWARDS:
        w.grad = b.grad = None
        h = HF.linear(x, w, b, activation, backward=backward)
        out = HF.linear(h, w, b, activation, backward=backward)
        HF.cross_entropy(out, torch.tensor([0, 1, 2, 3]), backward=backward).backward()
        grads[backward] = (w.grad.clone(), b.grad.clone())
    for gm, ga in zip(grads["manual"], grads["autograd"]):
        torch.testing.assert_close(gm, ga)


def _in_a_fresh_python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "4"}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


# a product over 2**21 numbers, spread over PyTorch's CPU threads, whose exact value is a
# denormal (1e-40): how many of them come out 0
_DENORMALS = "x = torch.full((1 << 21,), 1e-30) * 1e-10\nprint(torch.get_num_threads(), int((x == 0).sum()))"


def test_the_math_package_imports_nothing_else_of_handprop_and_changes_no_setting():
    """functional/ is the math only: importing it loads no handprop module beyond what
    ``import handprop`` does (no config, no Lightning), and leaves the process as it was:
    denormals kept, defaults unchanged."""
    out = _in_a_fresh_python(
        "import sys, torch, handprop\n"
        "package = set(sys.modules)\n"
        "before = (torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),"
        " torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())\n"
        "import handprop.functional\n"
        "after = (torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),"
        " torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())\n"
        "print(sorted(m for m in set(sys.modules) - package if m.startswith('handprop') and 'functional' not in m))\n"
        "print(before == after, 'lightning' in sys.modules)\n" + _DENORMALS
    )
    imported, same, threads_zeros = out.splitlines()
    assert imported == "[]"
    assert same == "True False"
    assert threads_zeros.split()[1] == "0"  # denormals kept: no process-wide flag set


def test_a_training_run_flushes_denormals_on_every_cpu_thread():
    """train() sets the flush-to-zero flag for its process before any tensor work starts the
    thread pool: every thread's share of the product is 0. (PyTorch by itself keeps the
    denormals, as the test above shows, so the check can fail.)"""
    threads, flushed = _in_a_fresh_python(
        "import torch\nfrom handprop.train import flush_denormals\nflush_denormals()\n" + _DENORMALS
    ).split()
    assert int(threads) > 1 and int(flushed) == 1 << 21


def test_lecuns_quadratic_cost_targets_plus_and_minus_one():
    """quadratic_pm1: zero where the digit's output is +1 and the other nine -1, and the
    plain quadratic cost of the same outputs against that code."""
    target = torch.tensor([2, 0, 9])
    code = torch.full((3, 10), -1.0).scatter_(1, target[:, None], 1.0)
    assert HF.cost("quadratic_pm1", code, target).item() == 0.0
    out = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    expected = ((out - code) ** 2).sum() / (2 * 3)
    torch.testing.assert_close(HF.cost("quadratic_pm1", out, target), expected)
    assert HF.cost("quadratic", code, target) > 0  # the lesson's cost wants 0, not -1, for the nine


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_the_least_cost_is_reached_where_the_outputs_match_the_smoothed_target(smoothing):
    """Cross-entropy with label smoothing never reaches 0: its floor is the smoothed target's
    entropy, reached where the softmax equals that target (what train.log says of the cost)."""
    classes = 10
    labels = torch.arange(classes)
    target = torch.full((classes, classes), smoothing / classes, dtype=torch.float64)
    target[labels, labels] += 1 - smoothing
    floor = HF.least_cost("cross_entropy", smoothing, classes)
    at_target = F.cross_entropy(target.log(), labels, label_smoothing=smoothing).item()
    assert floor == pytest.approx(at_target, abs=1e-12)
    nearby = F.cross_entropy(
        target.log()
        + 0.01 * torch.randn(classes, classes, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        labels,
        label_smoothing=smoothing,
    ).item()
    assert nearby > floor
    assert HF.least_cost("quadratic", 0.0, classes) == HF.least_cost("cross_entropy", 0.0, classes) == 0.0
    assert HF.least_cost("cross_entropy", 0.1, 10) == pytest.approx(0.5003, abs=1e-4)


# --------------------------------------------------------------------------- formulas, bitwise


def _fused_chain(name: str, g, a):
    """PyTorch's fused backward kernels, which computed these chain rules before they were
    written as formulas: the numbers must not change."""
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(g, a)
    if name == "tanh":
        return torch.ops.aten.tanh_backward(g, a)
    return torch.ops.aten.threshold_backward(g, a, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu"])
def test_each_chain_rule_formula_is_bitwise_the_fused_kernel(name, dtype):
    """Bitwise in float32 and float64 for sigmoid and relu. tanh's kernel computes 1 - a² as
    one fused multiply-add, rounded once, where the formula rounds a² first: equal to
    float precision (no recipe of the results tables uses tanh). In bfloat16 (autocast)
    the kernels compute in float32 and round once, where the formula rounds after each
    product: equal to bf16's precision."""
    torch.manual_seed(0)
    z = torch.cat([torch.randn(4096) * 6, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0])]).to(dtype)
    a = HF.ACTIVATIONS[name].fn(z)
    g = torch.randn_like(a)
    ours, fused = HF.ACTIVATIONS[name].chain(g, a), _fused_chain(name, g, a)
    if dtype == torch.bfloat16 and name != "relu":
        torch.testing.assert_close(ours, fused, rtol=2**-6, atol=1e-30)
    elif name == "tanh":
        torch.testing.assert_close(ours, fused, rtol=4 * torch.finfo(dtype).eps, atol=0)
    else:
        assert torch.equal(ours, fused)


def _scatter_cross_entropy_backward(g, logp, target, eps):
    """The cross-entropy gradient as a scatter into p, its form before it was written (p - q) / N."""
    n, k = logp.shape
    grad = logp.exp()
    if eps:
        grad.sub_(eps / k)
    grad.scatter_add_(1, target[:, None], grad.new_full((1, 1), eps - 1).expand(n, 1))
    return grad.mul_(g / n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.05])
def test_the_cross_entropy_gradient_formula_is_bitwise_the_scatter(eps, dtype):
    torch.manual_seed(0)
    logits = torch.randn(257, 10, dtype=dtype) * 4
    target = torch.randint(0, 10, (257,))
    loss, saved = HF.COSTS["cross_entropy"].forward(logits, target, eps)
    g = torch.tensor(1.0, dtype=loss.dtype)
    ours = HF.COSTS["cross_entropy"].backward(g, saved, eps)
    assert torch.equal(ours, _scatter_cross_entropy_backward(g, *saved, eps))
