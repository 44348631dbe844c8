"""Lightning callbacks: handprop's own checks and pictures of a run."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from .errors import HandpropError
from .module import logs_this_step

log = logging.getLogger(__name__)


class GradientAuditError(HandpropError):
    """The hand-written backward pass disagrees with PyTorch's autograd on a live batch."""


class GradientAudit(Callback):
    """Checks the hand-written backward pass against PyTorch's autograd while a run trains.

    Every ``every_n_steps`` optimiser steps it takes the gradient the run has just
    computed with our backward pass -- the real one, about to be applied, on the live
    batch -- and recomputes it with PyTorch's autograd on the same math
    (``backward="autograd"``): same parameters, same batch, same dropout masks (the RNG
    state is replayed), same precision. It logs, for every layer, the largest difference
    relative to the size of the reference gradient:

        audit/max_rel_err/layer<i> = max over W, b of  max|g_manual - g_autograd| / max|g_autograd|

    In float32 this is about 1e-7; a wrong derivative makes it of order 1. Above
    ``threshold`` (``threshold_half_precision`` when training in bf16/fp16, where both
    passes round differently) the run stops with an error naming the layer. Steps where
    the reference gradient itself is not finite are skipped: that is a diverging run, not
    a wrong backward.

    Cost: one extra forward/backward pass per audit (two with gradient accumulation,
    where the run's own gradient sums several batches) -- at the default of every 100
    steps about 1% of a run (``make bench`` measures it).
    """

    def __init__(self, every_n_steps: int = 100, threshold: float = 1e-3, threshold_half_precision: float = 5e-2):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be a positive integer")
        self.every_n_steps = every_n_steps
        self.threshold = threshold
        self.threshold_half_precision = threshold_half_precision
        self._pending = None  # (batch, RNG states) of the batch being audited

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0 and trainer.accumulate_grad_batches == 1:
            self._pending = (batch, _rng_states(pl_module.device))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        if self._pending is None:
            return
        batch, rng = self._pending
        self._pending = None
        manual = [p.grad for layer in pl_module.net.layers for p in (layer.weight, layer.bias)]
        if any(g is None for g in manual):
            return
        self._check(trainer, pl_module, self.relative_errors(trainer, pl_module, batch, manual, rng))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # With gradient accumulation the run's gradient sums several batches: audit one
        # batch on its own instead, computing both gradients here.
        accumulating = trainer.accumulate_grad_batches > 1
        if accumulating and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            if (trainer.global_step - 1) % self.every_n_steps == 0:
                self._check(trainer, pl_module, self.relative_errors(trainer, pl_module, batch))

    def _check(self, trainer: L.Trainer, pl_module, errors: dict[str, float] | None) -> None:
        if errors is None:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({f"audit/max_rel_err/{name}": err for name, err in errors.items()}, step=step)
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
    def relative_errors(self, trainer: L.Trainer, pl_module, batch, manual=None, rng=None) -> dict[str, float] | None:
        """Per layer, max |manual - autograd| / max |autograd| over its weight and bias gradients.

        ``manual``: the run's gradients for this batch, or None to compute them here too.
        ``rng``: the RNG states the batch's forward pass started from (its dropout masks).
        """
        images, labels = batch
        net = pl_module.net
        params = [p for layer in net.layers for p in (layer.weight, layer.bias)]
        device = pl_module.device
        mode = net.backward
        grads = {}
        # fork_rng: replaying the masks leaves the run's own RNG where it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            rng = rng or _rng_states(device)
            try:
                for backward in ("autograd",) if manual is not None else ("manual", "autograd"):
                    _set_rng_states(device, rng)
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


def _rng_states(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_states(device: torch.device, states) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


# --------------------------------------------------------------------------- what TensorBoard shows


def _layers(pl_module) -> list:
    """The network's layers, numbered from 1 in tags (layer1 takes the pixels)."""
    return list(pl_module.net.layers)


def _write_scalars(trainer: L.Trainer, values: dict[str, torch.Tensor], step: int) -> None:
    """Straight to the loggers, one host sync for all values: Lightning's self.log costs
    about a millisecond a call, and these are logged on few steps anyway."""
    if not trainer.is_global_zero or not trainer.loggers or not values:
        return
    floats = dict(zip(values, torch.stack(list(values.values())).float().tolist()))
    for logger in trainer.loggers:
        logger.log_metrics(floats, step=step)


class TrainingScalars(Callback):
    """The scalars of the vanishing-gradient story and of speed, for TensorBoard.

    Every ``every_n_steps`` optimiser steps (None: ``trainer.log_every_n_steps``), for every layer:

        grad_norm/layer<i>     |∂C/∂W|, |∂C/∂b| together: the size of the gradient the
                               layer receives (sigmoid networks starve their first layers)
        update_ratio/layer<i>  |ΔW| / |W| of that step: how fast the weights move
                               (about 1e-3 is healthy; 1e-1 is a learning rate too high)

    and every epoch ``time/epoch_s`` (training and validation) and
    ``throughput/samples_per_s`` (training digits per second of training, all processes).
    """

    def __init__(self, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be a positive integer (or None)")
        self.every_n_steps = every_n_steps

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._samples, self._before = time.perf_counter(), 0, None

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts without an epoch start

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not logs_this_step(trainer, self.every_n_steps):
            return
        norms = {}
        for i, layer in enumerate(_layers(pl_module), 1):
            grads = [p.grad for p in (layer.weight, layer.bias) if p is not None and p.grad is not None]
            if grads:
                norms[f"grad_norm/layer{i}"] = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))
        _write_scalars(trainer, norms, trainer.global_step)
        self._before = [layer.weight.detach().clone() for layer in _layers(pl_module)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(batch[1])
        self._trained = time.perf_counter()  # the epoch's training ends here, before validation
        if self._before is not None and trainer.global_step > 0:  # the step has been taken
            ratios = {
                f"update_ratio/layer{i}": (layer.weight.detach() - w0).norm() / w0.norm().clamp_min(1e-12)
                for i, (layer, w0) in enumerate(zip(_layers(pl_module), self._before), 1)
            }
            _write_scalars(trainer, ratios, trainer.global_step - 1)
            self._before = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._samples:  # (a resumed run at an epoch's very end)
            return
        samples = self._samples * trainer.world_size  # every process trains its own shard
        seconds = torch.tensor([time.perf_counter() - self._start, samples / (self._trained - self._start)])
        _write_scalars(trainer, {"time/epoch_s": seconds[0], "throughput/samples_per_s": seconds[1]}, trainer.global_step - 1)


class TensorBoardPictures(Callback):
    """3Blue1Brown's pictures of a run, in TensorBoard (and as PNG files in ``save_dir``).

    Every ``every_n_epochs`` epochs and after the last one, from the validation pass:
      pictures/first_layer_weights  each hidden neuron's 784 incoming weights as a 28x28
                                    picture (red +, blue -): what each neuron looks for
      pictures/confusion_matrix     true vs predicted digit over the validation set
      pictures/mistakes             misclassified validation digits, true→predicted
    every ``histograms_every_n_epochs`` epochs, per layer: histograms of weights, biases
    and their gradients (``layer<i>/weight``, ``layer<i>/weight_grad``, ...); and when
    training ends:
      pictures/cost_landscape       the cost on a plane around the trained weights, two
                                    random filter-normalised directions (Li et al. 2018),
                                    the optimiser's path projected on it (``pictures.py``)

    The landscape is the training cost (no dropout, no augmentation) on
    ``landscape_samples`` training digits over a ``landscape_points``² grid spanning
    ±``landscape_span`` in each direction. Pictures are drawn by process zero only; the
    confusion matrix counts every process's share of the validation set.
    """

    def __init__(
        self,
        every_n_epochs: int = 40,
        histograms_every_n_epochs: int = 20,
        max_neurons: int = 64,
        max_mistakes: int = 32,
        landscape: bool = True,
        landscape_points: int = 13,
        landscape_span: float = 1.0,
        landscape_samples: int = 128,
        save_dir: str | None = None,
        seed: int = 0,
    ):
        for name, value in (("every_n_epochs", every_n_epochs), ("histograms_every_n_epochs", histograms_every_n_epochs),
                            ("landscape_points", landscape_points), ("landscape_samples", landscape_samples)):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        self.every_n_epochs, self.histograms_every_n_epochs = every_n_epochs, histograms_every_n_epochs
        self.max_neurons, self.max_mistakes = max_neurons, max_mistakes
        self.landscape, self.landscape_points, self.landscape_span = landscape, landscape_points, landscape_span
        self.landscape_samples, self.save_dir, self.seed = landscape_samples, save_dir, seed
        self._plane = None
        self._collect = False

    # -- where pictures go

    @staticmethod
    def _writer(trainer):
        from lightning.pytorch.loggers import TensorBoardLogger

        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _publish(self, trainer, tag: str, picture, final: bool = True) -> None:
        """A figure or a (3, H, W) image tensor -> TensorBoard, and when ``final`` (the last
        epoch's, the landscape) to ``save_dir/<name>.png``."""
        import matplotlib.pyplot as plt

        name = tag.split("/")[-1]
        if self.save_dir is not None and final:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            path = Path(self.save_dir) / f"{name}.png"
            if isinstance(picture, torch.Tensor):
                from torchvision.utils import save_image

                save_image(picture, path)
            else:
                picture.savefig(path)
        writer = self._writer(trainer)
        if writer is not None:
            if isinstance(picture, torch.Tensor):
                writer.add_image(tag, picture, trainer.global_step)
            else:
                writer.add_figure(tag, picture, trainer.global_step, close=False)
        if not isinstance(picture, torch.Tensor):
            plt.close(picture)

    # -- hooks

    def setup(self, trainer, pl_module, stage: str) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix

        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_classes)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.landscape:
            from .pictures import LandscapePlane

            generator = torch.Generator().manual_seed(self.seed)
            weights = [layer.weight for layer in _layers(pl_module)]
            self._plane = LandscapePlane(weights, generator)
            if trainer.global_step == 0:  # the path starts at the initial weights
                self._plane.record(weights)

    @staticmethod
    def _due(trainer, every_n_epochs: int) -> bool:
        """This epoch is one to draw: every n-th, and the last."""
        epoch = trainer.current_epoch + 1
        return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The epoch's last batch: its gradients are still there (Lightning clears them
        # before validation, which runs before on_train_epoch_end).
        if batch_idx + 1 != trainer.num_training_batches or not trainer.is_global_zero:
            return
        writer = self._writer(trainer)
        if writer is None or not self._due(trainer, self.histograms_every_n_epochs):
            return
        for i, layer in enumerate(_layers(pl_module), 1):
            for kind, p in (("weight", layer.weight), ("bias", layer.bias)):
                if p is None:
                    continue
                # 64 even bins: TensorBoard's default ("tensorflow", ~1,500 buckets) takes 3x as long
                writer.add_histogram(f"layer{i}/{kind}", p.detach().float(), trainer.global_step, bins=64)
                if p.grad is not None:
                    writer.add_histogram(f"layer{i}/{kind}_grad", p.grad.float(), trainer.global_step, bins=64)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._plane is not None:
            self._plane.record([layer.weight for layer in _layers(pl_module)])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._collect = not trainer.sanity_checking and self._due(trainer, self.every_n_epochs)
        self._confusion = self._confusion.to(pl_module.device)  # (setup ran before the model moved there)
        self._confusion.reset()
        self._mistakes: list[tuple] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._collect or outputs is None:
            return
        images, labels = batch
        probabilities = pl_module.probabilities(outputs)
        confidence, predicted = probabilities.max(1)
        self._confusion.update(predicted, labels)
        wanted = self.max_mistakes - sum(len(m[0]) for m in self._mistakes)
        if wanted > 0 and trainer.is_global_zero:
            wrong = (predicted != labels).nonzero().flatten()[:wanted]
            self._mistakes.append(tuple(t[wrong].cpu() for t in (images, labels, predicted, confidence)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._collect:
            return
        matrix = self._confusion.compute()  # on every process: sums their counts
        if not trainer.is_global_zero:
            return
        from .pictures import confusion_figure, mistakes_figure, weight_grid

        final = trainer.current_epoch + 1 == trainer.max_epochs
        grid = weight_grid(_layers(pl_module)[0].weight, max_neurons=self.max_neurons)
        self._publish(trainer, "pictures/first_layer_weights", grid, final)
        figure = confusion_figure(matrix, f"validation, epoch {trainer.current_epoch}")
        self._publish(trainer, "pictures/confusion_matrix", figure, final)
        if self._mistakes:
            images, labels, predicted, confidence = (torch.cat(t) for t in zip(*self._mistakes))
            self._publish(trainer, "pictures/mistakes", mistakes_figure(images, labels, predicted, confidence), final)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._plane is None or not trainer.is_global_zero:
            return
        from .data import to_pixels
        from .pictures import cost_surface, landscape_figure

        train = getattr(trainer.datamodule, "splits", {}).get("train")
        if train is None:
            return
        pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(self.seed))[: self.landscape_samples]
        images = to_pixels(train.images[pick]).to(pl_module.device)
        labels = train.labels[pick].to(pl_module.device)
        weights = [layer.weight for layer in _layers(pl_module)]
        was_training = pl_module.training
        pl_module.eval()
        try:
            coords, surface = cost_surface(
                weights, self._plane.directions(weights), lambda: pl_module.output_and_loss(images, labels, eager=True)[1],
                span=self.landscape_span, points=self.landscape_points,
            )
        finally:
            pl_module.train(was_training)
        path = self._plane.path(weights)
        title = f"training cost around the trained weights ({self.landscape_samples} digits)"
        self._publish(trainer, "pictures/cost_landscape", landscape_figure(coords, surface, path, title))


# --------------------------------------------------------------------------- many processes


class ReplicaError(HandpropError):
    """The processes of a data-parallel run no longer hold the same weights."""


def parameters_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal digests, bitwise-equal weights."""
    import hashlib

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
        import torch.distributed as dist

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
            log.info("replicas: %d processes, identical parameters, sha256 %s (%s)", trainer.world_size, digests[0], when)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._check(trainer, pl_module, f"after epoch {trainer.current_epoch}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, "end of training")


# --------------------------------------------------------------------------- numerical faults


class NumericalError(HandpropError):
    """The training loss or a gradient is no longer a finite number."""


class NumericsGuard(Callback):
    """Stops a run whose loss or gradients turn NaN or infinite, naming the first bad step.

    Every step writes a flag on the device (no host sync); they are read every
    ``every_n_steps`` steps, with that step's gradients, and before each validation -- so
    that no checkpoint is written from broken weights: the last good one stays."""

    def __init__(self, every_n_steps: int = 10):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be a positive integer")
        self.every_n_steps = every_n_steps
        self._flags: torch.Tensor | None = None  # on the device: was step _steps[i]'s loss not finite?
        self._steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._flags is None:
            self._flags = torch.zeros(self.every_n_steps, dtype=torch.bool, device=loss.device)
        # a device-side write into a slot: no host sync; the steps' numbers stay on the host
        self._flags[len(self._steps) % self.every_n_steps] = ~torch.isfinite(loss.detach())
        self._steps.append(trainer.global_step - 1)  # the step this batch's loss belongs to
        if len(self._steps) == self.every_n_steps:
            self._check(trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not logs_this_step(trainer, self.every_n_steps):
            return
        self._check(trainer, pl_module)  # an earlier step's loss first: the first sign names the step
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise NumericalError(self._message(trainer, pl_module, trainer.global_step, "a gradient"))

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def _check(self, trainer, pl_module) -> None:
        if self._steps:
            bad = self._flags[: len(self._steps)].nonzero().flatten().tolist()  # the one host sync
            steps, self._steps = self._steps, []
            if bad:
                raise NumericalError(self._message(trainer, pl_module, steps[bad[0]], "the training loss"))

    @staticmethod
    def _message(trainer, pl_module, step: int, what: str) -> str:
        lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        lr = f"{lrs[0]:.3g}" if lrs else "?"
        # the latest checkpoint first (a ModelCheckpoint without a monitor), then the best
        callbacks = sorted((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)),
                           key=lambda c: c.monitor is not None)
        paths = list(dict.fromkeys(p for c in callbacks for p in (c.last_model_path, c.best_model_path) if p))
        kept = f" The last good checkpoint is kept: {', '.join(paths)}." if paths else " No checkpoint had been written yet."
        return (f"{what} became NaN or infinite at step {step} (epoch {trainer.current_epoch}). Likely cause: a "
                f"learning rate too high for this network (the step's learning rate was {lr}): try optimizer.lr "
                f"ten times smaller, or limit the steps with trainer.gradient_clip_val=1.0.{kept}")
