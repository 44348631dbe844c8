"""The training system: the MLP, its cost, its metrics and its optimiser, for Lightning."""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from torch import Tensor
from torch.optim.sgd import sgd
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from . import functional as HF
from .console import FILE_ONLY
from .data import to_pixels
from .errors import ConfigError, HandpropError
from .nn import MLP
from .optim import SDLM
from .rules import POSITIVE_INT, POSITIVE_INT_OR_NULL, SettingError, is_int, is_number, positive_int, require

log = logging.getLogger(__name__)


class ScheduleError(HandpropError):
    """A resumed run asks for more steps than the checkpoint's schedule has."""


class DigitClassifier(L.LightningModule):
    """Reads 28×28 digits with an MLP whose gradients come from our own backward pass.

    Input: images as floats in [0, 1], shape (N, 1, 28, 28) or (N, 784). With
    ``normalize=True`` they are standardised with the training set's pixel mean and
    standard deviation, which the data module provides at fit time and the checkpoint
    keeps (buffers), so that a checkpoint evaluates and predicts without the training
    data; ``normalize=False`` feeds the raw [0, 1] pixels, as 3Blue1Brown's and Nielsen's
    networks read them; ``normalize="lecun"`` codes them as LeCun et al. 1998 did,
    background -0.1 and ink 1.175 ("roughly mean 0 and variance 1").

    ``l2`` is λ of Nielsen's L2-regularised cost (network2.py), C = C0 + λ/(2n) Σ w², over
    the weights (not the biases), n the number of training examples: the optimiser's
    weight decay λ/n on the weights only, with n read from the data module at fit time.
    That is L2 exactly for optimisers whose weight decay is added to the gradient (SGD,
    Adam); AdamW's is decoupled from the gradient, not this cost, and is refused.

    ``compile=True`` compiles the network with torch.compile, the hand-written backward
    passes inside the graph.

    ``chunk``: optimiser steps per Lightning step. Lightning's loop and callbacks cost about
    a millisecond a step, more than the whole arithmetic of a textbook network at batch 10;
    with ``chunk`` = K > 1 the loader hands over K mini-batches at once and
    ``training_step`` takes one optimiser step for each (Lightning's manual optimisation,
    ``global_step`` counting optimiser steps), running the hand-written forward and backward
    sweeps directly (``functional.gradients``: the same functions MLPFunction runs, the
    autograd engine left out) -- bitwise the training of K = 1. None chooses K from the
    arithmetic a step does (``CHUNK_WORK``), and 1 wherever chunks cannot keep every
    promise of a run (see ``chunk_blockers``).

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_: true``):
    ``optimizer(params)`` and ``scheduler(optimizer)``. Schedulers step once per
    optimiser step; a OneCycleLR ``total_steps`` or a CosineAnnealingLR ``T_max``
    left unset is filled in with the run's number of steps.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
        output_activation: str = "identity",
        loss: str = "cross_entropy",
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        init: str = "pytorch",
        backward: str = "manual",
        input_size: int = 784,
        num_classes: int = 10,
        compile: bool = False,
        normalize: bool | str = True,
        l2: float = 0.0,
        chunk: int | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
    ):
        super().__init__()
        hidden = list(hidden)
        require(positive_int(input_size), "input_size", input_size, POSITIVE_INT)
        require(is_int(num_classes) and num_classes >= 2, "num_classes", num_classes, "must be an integer >= 2")
        HF.check_cost(loss, label_smoothing)
        _check_l2(l2, optimizer)
        require(chunk is None or positive_int(chunk), "chunk", chunk, POSITIVE_INT_OR_NULL)
        require(
            normalize in (True, False, "lecun"),
            "normalize",
            normalize,
            "must be true (standardise), false (raw [0, 1] pixels) or lecun (background -0.1, ink 1.175)",
        )
        # logger=False: train.py writes the whole run's config and final metrics to the
        # logger once (TensorBoard's HParams tab), not the model's arguments at the start
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        try:
            self.net = MLP([input_size, *hidden, num_classes], activation, output_activation, dropout, init, backward)
        except SettingError as e:  # the network's sizes are the model's input_size, hidden and num_classes
            if e.name != "sizes":
                raise
            raise SettingError(
                "hidden",
                "must be a list of positive layer sizes, e.g. {prefix}hidden=[512,256] (or [] for none)",
                hidden,
            ) from None
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.register_buffer("pixel_mean", torch.tensor(0.0))
        self.register_buffer("pixel_std", torch.tensor(1.0))
        self.pixel_stats_loaded = False  # True once load_weights brought a checkpoint's statistics
        self.chunk = 1  # optimiser steps per training_step, decided when fitting starts (setup)
        self._step_hooks: dict[str, list] = {}
        # nan_strategy="disable": a NaN loss shows in the epoch's mean instead of being dropped
        self.metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{kind}": MeanMetric(nan_strategy="disable")
                if kind == "loss"
                else MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
                for kind in ("loss", "acc")
            }
        )

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets _current_fx_name around every hook it calls, some 40 times a training
        # step; torch.nn.Module.__setattr__ checks parameters, buffers and submodules first,
        # which alone cost ~3% of a default epoch on a CPU. It is a plain string attribute.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        stats = getattr(self.trainer.datamodule, "pixel_stats", None)
        if stage == "fit" and stats is not None and not self.pixel_stats_loaded:
            self.pixel_mean.fill_(stats[0])
            self.pixel_std.fill_(stats[1])
        if stage == "fit":
            self.chunk = self._choose_chunk()
            self.automatic_optimization = self.chunk == 1
        if self.hparams.compile and not getattr(self.net, "_compiled_call_impl", None):
            # In place: parameter names and checkpoints stay those of the eager network.
            # fullgraph: our autograd.Functions must trace whole, never fall back to eager.
            # fallback_random: dropout masks drawn by PyTorch's own generator, as in eager
            # mode, so that seeded runs and the gradient audit's replay see the same masks.
            import torch._inductor.config  # noqa: PLC0415 -- inductor loads only with model.compile=true

            torch._inductor.config.fallback_random = True
            self.net.compile(fullgraph=True)

    def on_train_start(self) -> None:
        # A one-cycle schedule restored from a checkpoint keeps its length: resuming with a
        # larger trainer.max_epochs would crash mid-run ("Tried to step N times"). Say so now.
        # A cosine schedule's T_max restored from a checkpoint does not crash: past its end the
        # rate climbs back up, which is no more what was asked for. The same check, on resume.
        _carry_step_count(self.trainer)
        steps = self.optimizer_steps()
        hooks = {name: [] for name in ("on_optimizer_step_start", "on_before_optimizer_step", "on_optimizer_step_end")}
        for callback in self.trainer.callbacks:  # what a chunk calls at every optimiser step
            for name, found in hooks.items():
                hook = getattr(type(callback), name, None)
                if hook is not None and hook is not getattr(L.Callback, name, None):
                    found.append(getattr(callback, name))
        self._step_hooks = hooks
        keys = SCHEDULE_LENGTH_KEYS if self.trainer.ckpt_path is not None else ("total_steps",)
        for config in self.trainer.lr_scheduler_configs:
            total = next((getattr(config.scheduler, k) for k in keys if hasattr(config.scheduler, k)), None)
            if total is not None and total < steps:
                fix = (
                    "Resume with the original trainer.max_epochs, or train on from these weights with a fresh "
                    f"optimiser and schedule in a new run: init_from={self.trainer.ckpt_path} (instead of "
                    "ckpt_path) trainer.max_epochs=N."
                    if self.trainer.ckpt_path is not None
                    else "Leave the schedule's length null (the run's own length), or set it to at least that."
                )
                raise ScheduleError(
                    f"the learning-rate schedule ends after {total} steps but this run asks for {steps}. {fix}"
                )

    def load_weights(self, state_dict: dict) -> None:
        """A checkpoint's weights and pixel statistics (its state_dict), for a new run that
        starts from them (``init_from``); the statistics then stay the checkpoint's: they
        are part of the function the weights compute."""
        self.load_state_dict(state_dict)
        self.pixel_stats_loaded = True

    def training_recipe(self) -> dict[str, str | None]:
        """The optimiser and learning-rate schedule this module trains with, by name. A
        checkpoint records them: a resume restores their states, which fit only their own
        kind (checkpoint.check_same_recipe)."""

        def name(factory):
            return None if factory is None else getattr(called(factory)[0], "__name__", str(factory))

        return {"optimizer": name(self.optimizer_factory), "scheduler": name(self.scheduler_factory)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recipe"] = self.training_recipe()
        # Dropout masks and augmentation draw from the global RNGs: keep their state so a
        # resumed run draws exactly what the uninterrupted run would have.
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if states is not None and fitting:
            torch.set_rng_state(states["torch"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
        if fitting:
            self._resume_with_the_checkpoints_chunk(checkpoint)

    def _resume_with_the_checkpoints_chunk(self, checkpoint: dict) -> None:
        """A run resumed inside an epoch trains in the checkpoint's chunk size: Lightning
        counts the epoch's batches, validates when the count reaches the epoch's length and
        logs by it, so the unit cannot change inside an epoch. (From a checkpoint taken at
        an epoch's end it can: the next epoch starts afresh.)"""
        datamodule, world = self.trainer.datamodule, self.trainer.world_size
        state = checkpoint.get(type(datamodule).__qualname__, {}).get("train_loader") if datamodule else None
        if not state:  # (not handprop's device loader: it keeps no position)
            return
        steps = math.ceil(state["size"] // world / (datamodule.batch_size // world))  # the epoch's mini-batches
        theirs = state.get("chunk", 1)
        if not 0 < state["consumed"] < steps or theirs == self.chunk:
            return
        asked, blockers = self.hparams.get("chunk"), chunk_blockers(self, self.trainer)
        if asked is not None or (theirs > 1 and blockers):
            why = f"model.chunk={asked}" if asked is not None else ", ".join(blockers)
            raise ConfigError(
                f"the checkpoint stopped inside an epoch trained {theirs} optimiser step(s) per Lightning step; "
                f"this run ({why}) would train {self.chunk}. Resume with model.chunk={theirs} (or null), or "
                "from a checkpoint taken at an epoch's end (checkpoints/last.ckpt)"
            )
        self.chunk = theirs
        self.automatic_optimization = theirs == 1
        if self.trainer.is_global_zero:
            log.info("training: %d optimiser step(s) per Lightning step, as the checkpoint's epoch was", theirs)

    def normalize(self, images: Tensor) -> Tensor:
        """Pixels in [0, 1] -> flat vectors with the training set's mean 0 and std 1
        (or the raw pixels, flattened, with ``normalize=False``)."""
        if self.hparams.normalize == "lecun":  # LeCun et al. 1998: background -0.1, ink 1.175
            return images.flatten(1).mul(1.275).sub(0.1)
        if not self.hparams.normalize:  # (older checkpoints get __init__'s default, True)
            return images.flatten(1)
        return (images.flatten(1) - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.normalize(images))

    def probabilities(self, out: Tensor) -> Tensor:
        """The network's outputs as class probabilities, the way its cost reads them
        (``functional.COSTS[loss].probabilities``)."""
        return HF.COSTS[self.hparams.loss].probabilities(out)

    @property
    def calibrated(self) -> bool:
        """Whether the outputs are class probabilities (a softmax), or only scores."""
        return HF.COSTS[self.hparams.loss].calibrated

    def _sweep_args(self) -> tuple:
        """What the functional sweeps take of this network, as it is evaluated: its cost,
        label smoothing, activations, and every weight and bias (detached)."""
        hp = self.hparams
        params = [p.detach() for p in self.net.weights_and_biases()]
        return hp.loss, hp.label_smoothing, tuple(self.net.activations), params

    @torch.no_grad()
    def nudges(self, images: Tensor, labels: Tensor) -> HF.Nudges:
        """Backpropagation's sweep over these digits with its inside kept, the network as
        it is evaluated (``functional.nudges``): what they ask of every weight and bias."""
        return HF.nudges(self.normalize(images), labels, *self._sweep_args())

    @torch.no_grad()
    def cost_surface(self, images: Tensor, labels: Tensor, directions, alphas: Tensor, betas: Tensor) -> Tensor:
        """The cost of these digits at θ + α·d₁ + β·d₂ over the grid of ``alphas`` and
        ``betas`` (``pictures.mlp_cost_surface``; ``directions``: two lists shaped like
        the weights and biases), the weights left as they are."""
        from .pictures import mlp_cost_surface  # noqa: PLC0415 -- (pictures loads with the callbacks)

        cost, smoothing, activations, params = self._sweep_args()
        x = self.normalize(images)
        return mlp_cost_surface(x, labels, cost, smoothing, activations, params, directions, alphas, betas)

    def output_and_loss(self, images: Tensor, labels: Tensor, eager: bool = False) -> tuple[Tensor, Tensor]:
        """The network's output and its cost for a batch, in one pass. ``eager``: bypass
        torch.compile (the gradient audit's reference runs eagerly)."""
        net = self.net.forward if eager else self.net
        return net(self.normalize(images), labels, self.hparams.loss, self.hparams.label_smoothing)

    # Metrics. Each batch's loss and hits are counted on the device (torchmetrics' update:
    # no per-batch value, no host sync); each epoch's mean loss and accuracy are logged once,
    # at its end, where compute() also sums the counts of all DDP processes. The loss and
    # learning rate of single optimiser steps go to the logger only on the steps it writes
    # (trainer.log_every_n_steps), straight to the loggers: Lightning's self.log costs ~1 ms
    # a call on a CPU, more than a whole step of the default network's matrix products.

    def _step(self, batch, stage: str) -> tuple[Tensor, Tensor]:
        images, labels = batch
        out, loss = self.output_and_loss(images, labels)
        self.metrics[f"{stage}_loss"].update(loss.detach(), weight=len(labels))
        self.metrics[f"{stage}_acc"].update(out.detach(), labels)
        if stage == "train" and logs_this_step(self.trainer):
            self._log_steps([(self.global_step, loss.detach(), self._learning_rate())])
        return out, loss

    def _learning_rate(self) -> float:
        return self.trainer.optimizers[0].param_groups[0]["lr"]

    def _log_steps(self, steps: list[tuple[int, Tensor, float]]) -> None:
        """train/loss_step and train/lr of optimiser steps (step, loss, learning rate), each
        at its own step; the last loss also in the progress bar."""
        if not steps:
            return
        if self.trainer.is_global_zero and self.trainer.loggers:
            losses = torch.stack([loss for _, loss, _ in steps]).tolist()  # one host sync
            for (step, _, lr), loss in zip(steps, losses):
                for logger in self.trainer.loggers:
                    logger.log_metrics({"train/loss_step": loss, "train/lr": lr}, step=step)
        self.log("train/loss_step", steps[-1][1], on_step=True, on_epoch=False, prog_bar=True, logger=False)

    def _log_epoch(self, stage: str) -> None:
        loss, accuracy = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        if accuracy.update_called:  # (a run resumed at an epoch's very end counted nothing)
            # floats: compute() already summed every process's counts, nothing left to sync
            self.log(f"{stage}/loss_epoch" if stage == "train" else f"{stage}/loss", loss.compute().item())
            self.log(f"{stage}/acc", accuracy.compute().item(), prog_bar=stage == "val")
            if stage == "train":  # callback_metrics are what spawned DDP workers hand back to the main process
                self.log("trainer/global_step", float(self.global_step))
        loss.reset()
        accuracy.reset()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if self.automatic_optimization:
            return self._step(batch, "train")[1]
        return self._train_chunk(batch)

    @torch.no_grad()
    def _train_chunk(self, chunk) -> Tensor:
        """A chunk of mini-batches (data.Chunk), one optimiser step each, exactly as K = 1
        trains them: same pixels, dropout masks and augmentation draws in the same order,
        the same gradients (functional.gradients), the optimiser's and the schedule's own
        step(). Per step the callbacks' on_optimizer_step_start(trainer, module, batch),
        Lightning's on_before_optimizer_step (gradients in .grad) and
        on_optimizer_step_end(trainer, module, loss) are called;
        under DDP every step's gradient is averaged over the processes. Stops at
        trainer.max_steps, inside the chunk if need be. Returns the steps' losses."""
        trainer, net = self.trainer, self.net
        optimizer = self.optimizers(use_pl_optimizer=False)
        optimizer_step = sgd_step if type(optimizer) is torch.optim.SGD else lambda o: o.step()
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        hooks = self._step_hooks
        params, activations = net.weights_and_biases(), net.activations
        dropout = net.dropout if net.training else 0.0
        cost, smoothing = self.hparams.loss, self.hparams.label_smoothing
        size, labels = chunk.batch_size, chunk.labels
        # pixels (in [0, 1]) and inputs (normalised) of the whole chunk at once, unless
        # augmentation draws per mini-batch
        pixels = chunk.images.split(size)
        inputs = pixels if chunk.prepare else self.normalize(chunk.images).split(size)
        no_dropout = HF.dropout_masks(0, params, 0.0)
        every, world, last = trainer.log_every_n_steps, trainer.world_size, trainer.max_steps
        losses, outputs, logged = [], [], []
        for pixels_i, x, y in zip(pixels, inputs, labels.split(size)):
            step = progress.total.completed  # trainer.global_step
            if 0 <= last <= step:
                break
            if chunk.prepare:
                pixels_i = chunk.prepare(pixels_i)
            for hook in hooks["on_optimizer_step_start"]:
                hook(trainer, self, (pixels_i, y))
            if chunk.prepare:
                x = self.normalize(pixels_i)
            keeps = HF.dropout_masks(len(y), params, dropout) if dropout else no_dropout
            out, loss, grads = HF.gradients(x, y, cost, smoothing, activations, keeps, 1 / (1 - dropout), params)
            if world > 1:  # what DDP does for K = 1: every process steps with the mean gradient
                grads = _mean_over_processes(trainer, grads)
            for p, g in zip(params, grads):
                p.grad = g
            for hook in hooks["on_before_optimizer_step"]:
                hook(trainer, self, optimizer)
            if every > 0 and (step + 1) % every == 0:
                logged.append((step, loss, self._learning_rate()))
            optimizer_step(optimizer)
            for scheduler in schedulers:
                scheduler.step()
            progress.increment_ready()
            progress.increment_completed()
            chunk.loader.mark_consumed()
            for hook in hooks["on_optimizer_step_end"]:
                hook(trainer, self, loss)
            losses.append(loss)
            outputs.append(out)
        chunk.loader.mark_chunk_done()
        # Lightning counts logging steps in training_steps and adds one after this one: so
        # that epoch-level scalars are written at the optimiser step, as with K = 1
        trainer.fit_loop.epoch_loop._batches_that_stepped = progress.total.completed - 1
        losses = torch.stack(losses)
        trained = len(losses) * size
        self.metrics["train_loss"].update(losses, weight=torch.tensor([len(o) for o in outputs], device=losses.device))
        self.metrics["train_acc"].update(torch.cat(outputs), labels[:trained])
        self._log_steps(logged)
        return losses

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")[0].detach()  # the outputs, for callbacks (TensorBoardPictures)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        optimizer = self.optimizers(use_pl_optimizer=False) if self.trainer.optimizers else None
        if isinstance(optimizer, SDLM):
            self._measure_curvature(optimizer)

    def _measure_curvature(self, optimizer: SDLM) -> None:
        """LeCun's h, the cost's curvature along every weight (functional.curvature), on
        ``optimizer.samples`` training digits drawn afresh before every pass -- the same ones
        on every process, so that DDP's replicas stay equal."""
        train, epoch = self.trainer.datamodule.splits["train"], self.trainer.current_epoch
        pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(epoch))[: optimizer.samples]
        x = self.normalize(to_pixels(train.images[pick.to(train.images.device)]).to(self.device))
        params = self.net.weights_and_biases()
        h = HF.gauss_newton_diagonal(x, self.hparams.loss, self.net.activations, params)
        optimizer.start_pass(epoch + 1, dict(zip(params, h)))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("DigitClassifier was built without an optimizer: pass optimizer=...")
        optimizer = self.optimizer_factory(params=self._parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        length = self._schedule_length()
        try:
            scheduler = self.scheduler_factory(optimizer, **length)
        except ZeroDivisionError:  # OneCycleLR whose warm-up ends at its first step (pct_start x steps == 1)
            raise ScheduleError(
                f"the learning-rate schedule cannot be built for this run's length ({length or 'as set'}): "
                "its warm-up would end on its first step. Train for more steps, change "
                "scheduler.pct_start, or use scheduler=cosine / scheduler=none"
            ) from None
        # The module logs train/lr itself, per optimiser step; "name" is the tag Lightning's
        # learning-rate callbacks would use for it too.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def _parameter_groups(self):
        l2 = self.hparams.l2
        if not l2:
            return self.parameters()
        n = getattr(self.trainer.datamodule, "train_size", None) if self._trainer is not None else None
        if not n:
            raise ValueError("model.l2 needs the number of training examples: train with handprop's DigitsDataModule")
        weights = [p for name, p in self.net.named_parameters() if name.endswith("weight")]
        biases = [p for name, p in self.net.named_parameters() if not name.endswith("weight")]
        return [{"params": weights, "weight_decay": l2 / n}, {"params": biases, "weight_decay": 0.0}]

    def _schedule_length(self) -> dict:
        return schedule_length(self.scheduler_factory, lambda: int(self.optimizer_steps()))

    def optimizer_steps(self) -> int | float:
        """How many optimiser steps this run takes, infinite for an unlimited run
        (Lightning's estimate counts training batches: chunks of steps with chunk > 1)."""
        trainer = self.trainer
        if self.automatic_optimization:
            return trainer.estimated_stepping_batches
        limit = trainer.max_steps if trainer.max_steps >= 0 else math.inf
        if trainer.max_epochs in (None, -1):
            return limit
        trainer.estimated_stepping_batches  # noqa: B018 -- (sets the training loader up)
        return min(trainer.train_dataloader.steps_per_epoch * trainer.max_epochs, limit)

    def _choose_chunk(self) -> int:
        asked, blockers = self.hparams.get("chunk"), chunk_blockers(self, self.trainer)
        if asked is not None and asked > 1 and blockers:
            raise ConfigError(
                SettingError(
                    "chunk",
                    f"needs one mini-batch per step with {', '.join(blockers)}: set {{prefix}}chunk=1 "
                    "(or null, which chooses)",
                    asked,
                ).message("model.")
            )
        if asked is None and blockers:
            chunk, why = 1, f"one per Lightning step with {', '.join(blockers)}"
        elif asked is None:
            work = (
                self.trainer.datamodule.batch_size
                // self.trainer.world_size
                * sum(layer.in_features * layer.out_features for layer in self.net.layers)
            )
            chunk = max(1, min(MAX_CHUNK, round(CHUNK_WORK / work)))
            why = "chosen for the network's size (model.chunk=null)"
        else:
            chunk, why = asked, f"model.chunk={asked}"
        if self.trainer.is_global_zero:
            steps = f"{chunk} optimiser step{'s'[: chunk - 1]}"
            log.info("training: %s per Lightning step, %s", steps, why, extra=FILE_ONLY)
        if chunk > 1:  # Lightning counts its own steps (chunks) against log_every_n_steps; the steps log themselves
            warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")
        return chunk


# Chunked training (DigitClassifier's chunk=None): enough multiply-adds per Lightning step
# that its loop and callbacks (several milliseconds a step on a CPU, measured) stay a few
# percent of it -- about 200 ms of arithmetic on one CPU core -- and at most MAX_CHUNK
# mini-batches.
CHUNK_WORK = 2_000_000_000
MAX_CHUNK = 256


def chunk_blockers(module: DigitClassifier, trainer: L.Trainer) -> list[str]:
    """Why this run must train one mini-batch per Lightning step, if it must: chunks run
    the hand-written passes in float32 on handprop's device loader, and the settings below
    count in Lightning steps or need Lightning's own optimiser step."""
    from .data import DigitsDataModule  # noqa: PLC0415 -- data imports nothing of the model

    datamodule = trainer.datamodule
    checks = {
        "model.backward=autograd": module.hparams.backward != "manual",
        "model.compile=true": module.hparams.compile,
        f"trainer.precision={trainer.precision}": trainer.precision not in ("32-true", "32", 32),
        "trainer.gradient_clip_val": bool(trainer.gradient_clip_val),
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches != 1
        or any(isinstance(c, GradientAccumulationScheduler) for c in trainer.callbacks),
        "trainer.limit_train_batches": not _whole(trainer.limit_train_batches),
        "trainer.val_check_interval": not _whole(trainer.val_check_interval),
        "a checkpoint every n training steps": any(
            getattr(c, "_every_n_train_steps", 0) for c in trainer.checkpoint_callbacks
        ),
        "data.loader=dataloader": not isinstance(datamodule, DigitsDataModule) or datamodule.loader != "tensor",
    }
    return [reason for reason, applies in checks.items() if applies]


def sgd_step(optimizer: torch.optim.SGD) -> None:
    """``optimizer.step()`` of torch.optim.SGD without its wrappers (profiler record, step
    hooks, grad-mode switch), which cost a textbook network's step more than its update:
    the plain rule w <- w - lr * g as one foreach call, anything else (momentum, weight
    decay, maximize) through the same per-group call of torch's own ``sgd`` as SGD.step
    makes, momentum buffers kept in the optimiser's state. Bitwise SGD.step's update."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        momentum, lr = group["momentum"], group["lr"]
        if not (momentum or group["weight_decay"] or group["maximize"] or isinstance(lr, Tensor)):
            torch._foreach_add_(params, grads, alpha=-lr)
            continue
        buffers = [optimizer.state[p].get("momentum_buffer") for p in params] if momentum else []
        sgd(
            params,
            grads,
            buffers,
            weight_decay=group["weight_decay"],
            momentum=momentum,
            lr=lr,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            has_sparse_grad=False,
            foreach=group["foreach"],
            fused=group["fused"],
        )
        for p, buffer in zip(params, buffers):
            optimizer.state[p]["momentum_buffer"] = buffer
    optimizer._opt_called = True  # what step()'s wrapper records for the LR schedulers' order check


def _carry_step_count(trainer: L.Trainer) -> None:
    """Lightning counts optimiser steps in one place for automatic optimisation (chunk 1)
    and another for manual (chunks): a run resumed with the other kind than its checkpoint
    starts the count where the checkpoint left it."""
    counters = _step_counters(trainer)
    steps = max(c.completed for c in counters)
    for counter in counters:
        counter.ready = counter.completed = steps


def _step_counters(trainer: L.Trainer) -> tuple:
    """The fit loop's counts of optimiser steps: manual optimisation's, automatic's."""
    loop = trainer.fit_loop.epoch_loop
    return (
        loop.manual_optimization.optim_step_progress.total,
        loop.automatic_optimization.optim_progress.optimizer.step.total,
    )


def _whole(fraction) -> bool:
    """A Lightning limit or interval of 1.0: the whole epoch (an int counts batches)."""
    return isinstance(fraction, float) and fraction == 1.0


def _mean_over_processes(trainer: L.Trainer, grads: list[Tensor]) -> list[Tensor]:
    """The gradient averaged over the processes as DDP's reducer averages it: each divided
    by their number, then summed (bitwise DDP's for two processes; for more, the sum's
    order may differ from its buckets' in the last bit)."""
    flat = torch.cat([g.flatten() for g in grads]).div_(trainer.world_size)
    torch.distributed.all_reduce(flat)
    return [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads)]


def logs_this_step(trainer: L.Trainer, every_n_steps: int | None = None) -> bool:
    """Before optimiser step k (trainer.global_step == k, counted from 0): whether step k is
    one to log, (k + 1) % n == 0 -- Lightning's own rule for writing step scalars with
    n = trainer.log_every_n_steps (the default); never when n == 0."""
    n = trainer.log_every_n_steps if every_n_steps is None else every_n_steps
    return n > 0 and (steps_taken(trainer) + 1) % n == 0


def steps_taken(trainer: L.Trainer) -> int:
    """trainer.global_step, read from the fit loop's two counters (automatic optimisation
    counts in one, manual in the other; _carry_step_count keeps the idle one level): the
    property first asks the strategy which one counts, a few microseconds that the
    per-step checks of a chunk pay several times a step."""
    manual, automatic = _step_counters(trainer)
    return max(manual.completed, automatic.completed)


def called(factory: Callable) -> tuple[Callable, dict]:
    """What a factory (Hydra's ``_partial_``: a functools.partial) calls, and the keywords it
    fixes; a plain callable fixes none."""
    return getattr(factory, "func", factory), getattr(factory, "keywords", {})


def _check_l2(l2: float, optimizer: Callable | None) -> None:
    """Nielsen's L2 term needs an optimiser that adds weight decay to the gradient (SGD,
    Adam), and only one of the two ways of decaying the weights."""
    require(is_number(l2) and l2 >= 0, "l2", l2, "must be a number >= 0 (Nielsen's lambda, e.g. 5.0; 0: none)")
    if not l2 or optimizer is None:
        return
    factory, keywords = called(optimizer)
    decoupled = isinstance(factory, type) and (
        issubclass(factory, torch.optim.AdamW) or bool(keywords.get("decoupled_weight_decay"))
    )
    name = getattr(factory, "__name__", "the optimizer")
    require(
        not decoupled,
        "l2",
        l2,
        f"is an L2 term of the cost, which {name}'s decoupled weight decay is not: "
        "use optimizer=sgd, or {prefix}l2=0 and optimizer.weight_decay",
    )
    decay = keywords.get("weight_decay")
    require(
        not decay,
        "l2",
        l2,
        f"adds to optimizer.weight_decay={decay}: both decay the weights; set one of them to 0",
    )


# The schedulers' length arguments, left null in the config and filled in from the run.
SCHEDULE_LENGTH_KEYS = ("total_steps", "T_max")


def schedule_length(factory, steps: Callable[[], int]) -> dict:
    """The schedule's length in optimiser steps where its config leaves it unset:
    OneCycleLR's total_steps, CosineAnnealingLR's T_max (``steps()`` is asked only then)."""
    target, keywords = called(factory)
    given = {k: v for k, v in keywords.items() if v is not None}
    params = inspect.signature(target).parameters
    if "total_steps" in params and "total_steps" not in given and "epochs" not in given:
        return {"total_steps": steps()}
    if "T_max" in params and "T_max" not in given:
        return {"T_max": steps()}
    return {}
