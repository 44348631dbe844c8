"""GPU checks of the hand-written backward (run by hand on a machine with CUDA; not collected by pytest).

    PYTHONPATH=benchmarks python tests/gpu_check.py --out DIR

Writes DIR/gpu_check.json: autocast fp16/bf16 on CUDA against the autograd reference,
saved-tensor dtypes, torch.compile (inductor, fullgraph) against eager, and the
manual/autograd training-step speed and memory ratios on the GPU.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from handprop import functional as HF
from handprop.nn import MLP

from bench import SIZES, backward_vs_autograd


def grads(mlp, x, y, backward, dtype=None):
    torch.manual_seed(1)
    mlp.backward = backward
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        out = mlp(x)
        loss = HF.cross_entropy(out, y, 0.1, backward=backward)
    return out, loss, torch.autograd.grad(loss, list(mlp.parameters()))


def max_rel(a, b):
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    dev = "cuda"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": {}}
    checks = report["checks"]

    for dtype in (torch.float16, torch.bfloat16):
        for act in HF.ACTIVATIONS:
            torch.manual_seed(0)
            mlp = MLP([784, 512, 256, 10], act, dropout=0.25).to(dev)
            x, y = torch.randn(256, 784, device=dev), torch.randint(0, 10, (256,), device=dev)
            out_m, loss_m, g_m = grads(mlp, x, y, "manual", dtype)
            out_a, loss_a, g_a = grads(mlp, x, y, "autograd", dtype)
            checks[f"autocast_{str(dtype)[6:]}_{act}"] = {
                "out_dtype": str(out_m.dtype),
                "loss_dtype": str(loss_m.dtype),
                "grad_dtypes": sorted({str(g.dtype) for g in g_m}),
                "max_rel_err_vs_autograd": max_rel(g_m, g_a),
                "ok": out_m.dtype == dtype and all(g.dtype == torch.float32 for g in g_m) and max_rel(g_m, g_a) < 5e-2,
            }
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = MLP([784, 64, 10], "sigmoid").to(dev)(torch.randn(8, 784, device=dev))
    node, saved = out.grad_fn, []
    while node is not None and type(node).__name__ == "LinearActFunctionBackward":
        saved += [str(t.dtype) for t in node.saved_tensors if t is not None and t.is_floating_point()]
        node = node.next_functions[0][0]
    checks["autocast_saved_dtypes"] = {"saved": saved, "ok": set(saved) == {"torch.bfloat16"}}

    for act in ("relu", "gelu", "tanh"):
        torch.manual_seed(0)
        mlp = MLP([784, 512, 256, 10], act).to(dev)
        x, y = torch.randn(256, 784, device=dev), torch.randint(0, 10, (256,), device=dev)
        _, _, eager = grads(mlp, x, y, "manual")
        torch._dynamo.reset()
        mlp.compile(fullgraph=True)
        start = time.perf_counter()
        _, _, compiled = grads(mlp, x, y, "manual")
        checks[f"compile_inductor_{act}"] = {
            "compile_s": time.perf_counter() - start,
            "max_rel_err_vs_eager": max_rel(compiled, eager),
            "ok": max_rel(compiled, eager) < 1e-4,
        }

    report["bench"] = [
        backward_vs_autograd(hidden, recipe, batch, repeats=9, device=dev)
        for recipe in ("default", "plain")
        for batch in (128, 4096)
        for hidden in SIZES
    ]
    report["all_ok"] = all(c["ok"] for c in checks.values())
    Path(args.out, "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v["ok"] for k, v in checks.items()}, indent=0))
    for row in report["bench"]:
        print(
            f"{row['network']:>18} {row['recipe']:>8} batch {row['batch']:>5}: manual {row['step_ms_manual']:.3f} ms "
            f"autograd {row['step_ms_autograd']:.3f} ms speed ratio {row['speed_ratio']:.3f} "
            f"memory ratio {row['memory_ratio']:.3f}"
        )
    print("ALL OK" if report["all_ok"] else "SOME CHECKS FAILED")


if __name__ == "__main__":
    main()
