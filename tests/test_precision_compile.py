"""The manual layers under mixed precision and torch.compile, against the autograd reference."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handprop import functional as HF
from handprop.nn import MLP
from handprop.train import train

from conftest import tensorboard_run

ACTIVATIONS = list(HF.ACTIVATIONS)


def _grads(mlp, x, y, backward, seed=0):
    torch.manual_seed(seed)
    mlp.backward = backward
    loss = HF.cross_entropy(mlp(x), y, 0.1, backward=backward)
    return loss, torch.autograd.grad(loss, list(mlp.parameters()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_autocast_cpu_matches_the_reference_and_keeps_fp32_grads(dtype, activation):
    torch.manual_seed(0)
    mlp = MLP([64, 48, 32, 10], activation, dropout=0.2)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    results = {}
    for backward in HF.BACKWARDS:
        with torch.autocast("cpu", dtype=dtype):
            torch.manual_seed(1)
            mlp.backward = backward
            out, loss = mlp(x, y, "cross_entropy", 0.1)
        assert out.dtype == dtype and loss.dtype == torch.float32
        results[backward] = torch.autograd.grad(loss, list(mlp.parameters()))
        assert all(g.dtype == torch.float32 for g in results[backward])
    for gm, ga in zip(results["manual"], results["autograd"]):
        torch.testing.assert_close(gm, ga, rtol=2e-2, atol=2e-2 * ga.abs().max().item())


def test_autocast_saves_tensors_in_the_autocast_dtype():
    """The layer keeps x, W and its output in bf16 for backward, not float32 copies."""
    mlp = MLP([16, 8, 4], "sigmoid")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(torch.randn(5, 16))
    assert type(out.grad_fn).__name__ == "MLPFunctionBackward"
    saved = [t for t in out.grad_fn.saved_tensors if t is not None and t.is_floating_point()]
    assert len(saved) == 4  # layer 2: x, W (identity saves no output); layer 1: x, a (no dx, so no W)
    assert {t.dtype for t in saved} == {torch.bfloat16}
    layer = mlp.layers[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(5, 16))
    assert {t.dtype for t in out.grad_fn.saved_tensors if t is not None} == {torch.bfloat16}


@pytest.mark.parametrize("fused", [False, True], ids=["separate_cost", "fused_cost"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_compile_fullgraph_matches_eager(activation, dropout, fused):
    """fullgraph=True fails on any graph break: the Functions trace whole. aot_eager runs
    the traced forward and our traced backward without code generation (fast); the same
    graph goes to inductor in the slow test below and on the GPU check."""
    torch.manual_seed(0)
    mlp = MLP([20, 32, 16, 10], activation, dropout=dropout)
    x, y = torch.randn(8, 20), torch.randint(0, 10, (8,))

    def loss_fn(x, y):
        return mlp(x, y, "cross_entropy", 0.1)[1] if fused else HF.cross_entropy(mlp(x), y, 0.1)

    torch.manual_seed(5)
    eager = torch.autograd.grad(loss_fn(x, y), list(mlp.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    grads = torch.autograd.grad(compiled(x, y), list(mlp.parameters()))
    for ge, gc in zip(eager, grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    torch.manual_seed(0)
    mlp = MLP([20, 32, 16, 10], "gelu")
    x, y = torch.randn(8, 20), torch.randint(0, 10, (8,))
    eager = _grads(mlp, x, y, "manual")[1]
    torch._dynamo.reset()
    mlp.compile(fullgraph=True)
    compiled = _grads(mlp, x, y, "manual")[1]
    for ge, gc in zip(eager, compiled):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)


def _audit_max(run_dir):

    events = EventAccumulator(str(tensorboard_run(run_dir)))
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith("vs_autograd/")]
    assert len(tags) == 3
    return max(e.value for t in tags for e in events.Scalars(t))


def test_bf16_mixed_run_from_the_config(train_cfg, tmp_path):

    metrics = train(train_cfg("trainer.precision=bf16-mixed", "callbacks.gradient_audit.every_n_steps=1"))
    assert metrics["test/acc"] > 0.3  # 8 steps of training: far above chance, far below a real run
    assert _audit_max(tmp_path) < 5e-2


@pytest.mark.slow
def test_compiled_run_from_the_config(train_cfg, tmp_path):

    metrics = train(train_cfg("model.compile=true", "callbacks.gradient_audit.every_n_steps=1"))
    assert metrics["test/acc"] > 0.3
    assert _audit_max(tmp_path) < 1e-5
