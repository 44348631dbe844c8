"""LeCun's optimiser, by hand: stochastic diagonal Levenberg-Marquardt.

LeCun, Bottou, Bengio & Haffner 1998, Appendix C ("Efficient BackProp", section 9.1):
every weight w_k takes its own step,

    w_k ← w_k − ε_k ∂C/∂w_k,      ε_k = η / (μ + h_kk),

where h_kk estimates the cost's second derivative along w_k (the Gauss-Newton diagonal
of ``functional.curvature``), re-estimated before every pass over the training set on a
few hundred digits (the paper: 500), and μ keeps the step bounded where the cost is
flat. η falls pass by pass on a fixed schedule (the paper's, for LeNet-5 and its MLPs:
0.0005 for two passes, 0.0002 for three, 0.0001 for three, 0.00005 for four, then
0.00001; μ = 0.02).

The module (``DigitClassifier.on_train_epoch_start``) measures h with the second backward
pass (``curvature``) and hands it over with ``start_pass``; ``step`` applies the rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as HF
from .data import to_pixels

LECUN_1998 = ((1, 0.0005), (3, 0.0002), (6, 0.0001), (9, 0.00005), (13, 0.00001))  # (first pass, η)


class SDLM(torch.optim.Optimizer):
    """w ← w − η / (μ + h) ⊙ ∂C/∂w, with h per weight from ``start_pass``.

    ``schedule``: (first pass, η) pairs, passes counted from 1; η of the latest pair whose
    pass has begun (``lr`` before the first). ``samples``: how many training digits h is
    estimated on, before every pass."""

    def __init__(self, params, lr: float = 0.0005, mu: float = 0.02, samples: int = 500, schedule=None):
        pairs = [tuple(pair) for pair in (schedule or [])]
        super().__init__(params, {"lr": lr, "mu": mu})
        self.samples, self.schedule = samples, pairs

    def rate(self, epoch: int) -> float | None:
        """η for pass ``epoch`` (from 1) by the schedule; None before its first pass, or
        without one (the rate stays as it is)."""
        started = [lr for first, lr in self.schedule if first <= epoch]
        return started[-1] if started else None

    @torch.no_grad()
    def start_pass(self, epoch: int, curvature: dict[Tensor, Tensor]) -> None:
        """Before pass ``epoch`` (from 1): h for every parameter (parameter -> h), and η
        from the schedule."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["h"] = curvature[p].to(p.dtype)
        rate = self.rate(epoch)
        if rate is not None:
            for group in self.param_groups:
                group["lr"] = rate

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                h = self.state[p].get("h")
                if h is None:
                    raise RuntimeError("SDLM steps with each weight's curvature: call start_pass first")
                p.addcdiv_(p.grad, h + group["mu"], value=-group["lr"])  # w -= η ∂C/∂w / (μ + h)
        return loss


def curvature(module, images: Tensor, labels: Tensor, samples: int, epoch: int) -> dict[Tensor, Tensor]:
    """LeCun's h, the cost's curvature along every weight of ``module``'s network
    (functional.curvature), on ``samples`` of the training digits (uint8 ``images``) drawn
    afresh before pass ``epoch`` -- the same ones on every process, so that DDP's replicas
    stay equal. Parameter -> h."""
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))[:samples]
    x = module.normalize(to_pixels(images[pick.to(images.device)]).to(module.device))
    params = module.net.weights_and_biases()
    h = HF.gauss_newton_diagonal(x, module.hparams.loss, module.net.activations, params)
    return dict(zip(params, h))


def l2_groups(net, l2: float, n: int | None) -> list[dict]:
    """Nielsen's L2 term λ/2n Σ w² as the optimiser's weight decay λ/n, on the weights only."""
    if not n:
        raise ValueError("model.l2 needs the number of training examples: train with handprop's DigitsDataModule")
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in net.named_parameters() if not name.endswith("weight")]
    return [{"params": weights, "weight_decay": l2 / n}, {"params": biases, "weight_decay": 0.0}]
