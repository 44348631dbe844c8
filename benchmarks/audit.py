"""Section ``audit``: what the live gradient audit costs at its default interval -- one audit
(the step replayed through PyTorch's autograd and compared) against the training steps
between two audits."""

from __future__ import annotations

import lightning as L
import timing
import torch

from handprop.callbacks import GradientAudit
from handprop.data import Chunk
from handprop.module import DigitClassifier


def audit_overhead(every_n_steps: int = 100, batch: int = 128, repeats: int = 9, number: int = 5) -> dict:
    """Time of one gradient audit relative to the training steps between two audits."""
    torch.manual_seed(0)
    model = DigitClassifier(dropout=0.25, label_smoothing=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )  # one process, float32
    audit = GradientAudit(every_n_steps)

    def step():
        opt.zero_grad(set_to_none=True)
        model.output_and_loss(images, labels)[1].backward()
        opt.step()

    model.step_in_progress.begin(Chunk(images, labels, batch), 0)  # the step the audit replays
    step()
    manual = [p.grad for layer in model.net.layers for p in (layer.weight, layer.bias)]
    with timing.threads() as threads:
        t = timing.interleaved_medians(
            {"step": step, "audit": lambda: audit.relative_errors(trainer, model, manual=manual)}, repeats, number
        )
    return {
        "network": "784-512-256-10",
        "batch": batch,
        "threads": threads,
        "every_n_steps": every_n_steps,
        "audit_ms": t["audit"] * 1e3,
        "step_ms": t["step"] * 1e3,
        "overhead_pct": 100 * t["audit"] / (every_n_steps * t["step"]),
    }


def measure(args) -> dict:
    return audit_overhead(repeats=args.repeats, **timing.toy(args, batch=16, number=2))


def report(a: dict) -> str:
    return (
        f"\nGradient audit every {a['every_n_steps']} steps ({a['network']}, batch {a['batch']}, "
        f"{timing.plural(a['threads'], 'CPU thread')}, audit and step taking turns): one audit "
        f"{a['audit_ms']:.2f} ms, a step {a['step_ms']:.2f} ms -> +{a['overhead_pct']:.2f}% of training time"
    )
