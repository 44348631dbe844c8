"""The run's own checks: the hand-written backward against autograd on live batches, finite
losses and gradients, and identical replicas under data parallelism."""

from __future__ import annotations

import hashlib
import logging
import math

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ..errors import GradientAuditError, NumericalError, ReplicaError
from ..steps import logs_this_step, rng_states, set_rng_states

log = logging.getLogger(__name__)


class GradientAudit(Callback):
    """Checks the hand-written backward pass against PyTorch's autograd while a run trains.

    Every ``every_n_steps`` optimiser steps it takes the gradient the run has just
    computed with our backward pass -- the real one, about to be applied, on the live
    batch -- and recomputes it with PyTorch's autograd on the same math
    (``backward="autograd"``): same parameters, same batch, same dropout masks (the RNG
    state is replayed), same precision. It logs, for every layer, the largest difference
    relative to the size of the reference gradient:

        vs_autograd/max_rel_err/layer<i> = max over W, b of  max|g_manual - g_autograd| / max|g_autograd|

    In float32 this is about 1e-7; a wrong derivative makes it of order 1. Above
    ``threshold`` (``threshold_half_precision`` when training in bf16/fp16, where both
    passes round differently) the run stops with an error naming the layer. Steps where
    the reference gradient itself is not finite are skipped: that is a diverging run, not
    a wrong backward.

    It looks in Lightning's ``on_before_optimizer_step``, which every optimiser step calls
    with its gradient in ``.grad``; the step's mini-batch and random draws come back from
    the module (``replay_step``). Cost: one extra forward/backward pass per audit -- at the
    default of every 100 steps about 1% of a run (``make bench`` measures it).
    """

    def __init__(self, every_n_steps: int = 100, threshold: float = 1e-3, threshold_half_precision: float = 5e-2):
        self.every_n_steps = every_n_steps
        self.threshold = threshold
        self.threshold_half_precision = threshold_half_precision

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        if trainer.global_step % self.every_n_steps or pl_module.step_in_progress.rng is None:
            return  # (not a step to audit, or a training step that keeps no record of its start)
        manual = [p.grad for p in pl_module.net.weights_and_biases()]
        if any(g is None for g in manual):
            return
        self._check(trainer, pl_module, self.relative_errors(trainer, pl_module, manual=manual))

    def _check(self, trainer: L.Trainer, pl_module, errors: dict[str, float] | None) -> None:
        if errors is None:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({f"vs_autograd/max_rel_err/{name}": err for name, err in errors.items()}, step=step)
        half = "16" in str(trainer.precision)
        limit = self.threshold_half_precision if half else self.threshold
        failed = [
            f"{name} ({layer.out_features}x{layer.in_features}, activation {layer.activation}): {err:.3g}"
            for (name, err), layer in zip(errors.items(), pl_module.net.layers)
            if not err <= limit
        ]
        if failed:
            raise GradientAuditError(
                f"gradient audit failed at step {step}: the hand-written backward differs from PyTorch's "
                f"autograd (relative error above {limit:g}, precision {trainer.precision}) in "
                + "; ".join(failed)
                + ". The manual backward pass of these layers is wrong; run with model.backward=autograd "
                "to train on the reference meanwhile."
            )

    @torch.no_grad()
    def relative_errors(self, trainer: L.Trainer, pl_module, batch=None, manual=None) -> dict[str, float] | None:
        """Per layer, max |manual - autograd| / max |autograd| over its weight and bias gradients.

        ``manual``: the gradients the run has just computed for the optimiser step in
        progress, whose mini-batch, augmentation and dropout masks are replayed
        (``DigitClassifier.replay_step``); or None: both gradients on ``batch`` here.
        """
        net = pl_module.net
        params = net.weights_and_biases()
        device = pl_module.device
        mode = net.backward
        grads = {}
        # fork_rng: the replayed draws leave the run's own generators where they were
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            images, labels = pl_module.replay_step() if manual is not None else batch
            rng = rng_states()
            try:
                for backward in ("autograd",) if manual is not None else ("manual", "autograd"):
                    set_rng_states(rng)
                    net.backward = backward
                    with torch.enable_grad(), trainer.precision_plugin.forward_context():
                        _, loss = pl_module.output_and_loss(images, labels, eager=True)
                    grads[backward] = torch.autograd.grad(loss, params)
            finally:
                net.backward = mode
        references = grads["autograd"]
        if manual is not None and trainer.world_size > 1:
            # Under DDP the run's gradient is already the mean over every process's batch:
            # so must the reference be (one all-reduce, every process audits the same steps).
            flat = trainer.strategy.reduce(torch.cat([g.flatten() for g in references]), reduce_op="mean")
            references = [r.view_as(g) for r, g in zip(flat.split([g.numel() for g in references]), references)]
        errors = []
        for g_manual, reference in zip(manual if manual is not None else grads["manual"], references):
            scale = reference.abs().max()
            diff = torch.nan_to_num((g_manual - reference).abs().max(), nan=math.inf)
            errors.append(torch.where(torch.isfinite(scale), diff / scale.clamp_min(1e-30), torch.nan))
        per_layer = torch.stack(errors).view(len(net.layers), 2).amax(1).tolist()  # one host sync
        if any(math.isnan(e) for e in per_layer):
            return None
        return {f"layer{i + 1}": e for i, e in enumerate(per_layer)}


def parameters_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests, bitwise-equal weights."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ReplicaCheck(Callback):
    """Under data parallelism every process must end with the same weights: DDP averages
    the gradients, so every optimiser step is the same step everywhere. When training ends
    (and every ``every_n_epochs`` epochs, if set), the processes compare digests of their
    parameters; a difference stops the run naming the processes that drifted. Logs
    ``replicas: N processes, identical parameters, sha256 <digest>`` on process zero."""

    def __init__(self, every_n_epochs: int | None = None):
        self.every_n_epochs = every_n_epochs

    def _check(self, trainer, pl_module, when: str) -> None:
        if trainer.world_size == 1:
            return

        digests: list = [None] * trainer.world_size
        dist.all_gather_object(digests, parameters_digest(pl_module))
        if len(set(digests)) > 1:
            groups: dict = {}
            for rank, d in enumerate(digests):
                groups.setdefault(d, []).append(rank)
            raise ReplicaError(
                f"{when}: the {trainer.world_size} processes hold different parameters (processes grouped by "
                f"identical weights: {sorted(groups.values())}). Something made them step differently: "
                "a parameter DDP does not see, or a per-process random draw that changes the model."
            )
        if trainer.is_global_zero:
            log.info(
                "replicas: %d processes, identical parameters, sha256 %s (%s)", trainer.world_size, digests[0], when
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._check(trainer, pl_module, f"after epoch {trainer.current_epoch}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, "end of training")


class NumericsGuard(Callback):
    """Stops a run whose loss or gradients turn NaN or infinite, naming the first bad step.

    Every optimiser step keeps its loss on the device (no host sync); they are read every
    ``every_n_steps`` steps, with that step's gradients, and before each validation -- so
    that no checkpoint is written from broken weights: the last good one stays."""

    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = every_n_steps
        self._losses: list[torch.Tensor] = []  # on the device, the loss of each step in _steps
        self._steps: list[int] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._losses.append(loss.detach())
        self._steps.append(trainer.global_step)  # the step this loss belongs to
        if len(self._steps) >= 2 * self.every_n_steps:  # (read below, unless no step reaches it)
            self._check(trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not logs_this_step(trainer, self.every_n_steps):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._check(trainer, pl_module, grads)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def _check(self, trainer, pl_module, grads=()) -> None:
        """The losses kept so far and ``grads`` (this step's gradients), in one host sync;
        an earlier step's loss is named first: the first sign names the step."""
        if not self._steps and not grads:
            return
        # a NaN or an infinity makes its tensor's sum non-finite
        sums = torch.stack([*self._losses, *(g.sum() for g in grads)])
        steps, self._steps, self._losses = self._steps, [], []
        finite = torch.isfinite(sums)
        if bool(finite.all()):
            return
        bad = (~finite).nonzero().flatten().tolist()
        if bad[0] < len(steps):
            raise NumericalError(self._message(trainer, pl_module, steps[bad[0]], "the training loss"))
        if not all(bool(torch.isfinite(g).all()) for g in grads):  # (not a finite sum that overflowed)
            raise NumericalError(self._message(trainer, pl_module, trainer.global_step, "a gradient"))

    @staticmethod
    def _message(trainer, pl_module, step: int, what: str) -> str:
        lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        lr = f"{lrs[0]:.3g}" if lrs else "?"
        # the latest checkpoint first (a ModelCheckpoint without a monitor), then the best
        callbacks = sorted(
            (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)),
            key=lambda c: c.monitor is not None,
        )
        paths = list(dict.fromkeys(p for c in callbacks for p in (c.last_model_path, c.best_model_path) if p))
        kept = (
            f" The last good checkpoint is kept: {', '.join(paths)}."
            if paths
            else " No checkpoint had been written yet."
        )
        return (
            f"{what} became NaN or infinite at step {step} (epoch {trainer.current_epoch}). Likely cause: a "
            f"learning rate too high for this network (the step's learning rate was {lr}): try optimizer.lr "
            f"ten times smaller, or limit the steps with model.gradient_clip_val=1.0.{kept}"
        )
