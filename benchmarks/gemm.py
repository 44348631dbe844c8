"""Section ``gemm``: a large MLP's training step (784-1024-1024-10, batch 512, float32) in
FLOP/s, as a fraction of the machine's own matrix-product rate, the two taking turns."""

from __future__ import annotations

import timing
import torch

from handprop.nn import MLP


def gemm_fraction(batch: int = 512, hidden=(1024, 1024), repeats: int = 9, square: int = 2048) -> dict:
    """FLOP/s of a training step against the machine's own matrix-product rate."""
    torch.manual_seed(0)
    sizes = [784, *hidden, 10]
    mlp = MLP(sizes, "relu")
    opt = torch.optim.SGD(mlp.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    layers = list(zip(sizes, sizes[1:]))
    # forward x Wᵀ and dW = dzᵀ x for every layer, dx = dz W for all but the first
    flops = 2 * batch * (2 * sum(a * b for a, b in layers) + sum(a * b for a, b in layers[1:]))
    a, b = torch.randn(square, square), torch.randn(square, square)

    def step():
        opt.zero_grad(set_to_none=True)
        mlp(x, y)[1].backward()
        opt.step()

    with timing.threads() as threads:
        t = timing.interleaved_medians({"step": step, "gemm": lambda: a @ b}, repeats, 3)
    peak, achieved = 2 * square**3 / t["gemm"], flops / t["step"]
    return {
        "network": "-".join(map(str, sizes)),
        "batch": batch,
        "threads": threads,
        "step_ms": t["step"] * 1e3,
        "step_gflops": achieved / 1e9,
        "gemm_gflops": peak / 1e9,
        "fraction_of_gemm": achieved / peak,
        "gemm_size": square,
    }


def measure(args) -> dict:
    return gemm_fraction(repeats=args.repeats, **timing.toy(args, batch=16, hidden=(32, 32), square=64))


def report(g: dict) -> str:
    return (
        f"\nLarge-MLP step ({g['network']}, batch {g['batch']}, float32, {timing.plural(g['threads'], 'CPU thread')}): "
        f"{g['step_ms']:.1f} ms = {g['step_gflops']:.1f} GFLOP/s; a {g['gemm_size']}x{g['gemm_size']} matrix product "
        f"runs at {g['gemm_gflops']:.1f} GFLOP/s -> {100 * g['fraction_of_gemm']:.0f}% of the machine's GEMM rate"
    )
