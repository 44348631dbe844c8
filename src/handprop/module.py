"""The training system, for Lightning: the MLP, its cost, its metrics and its optimiser.

Every training step is backpropagation as the lesson tells it, on Lightning's manual
optimisation (the one optimisation mode, for every run):

    out, loss = self.output_and_loss(x, y)   forward sweep and cost: one MLPFunction node
    self.manual_backward(loss)               the autograd engine calls MLPFunction.backward
    optimizer.step(); schedule.step()        Lightning counts the step and calls its hooks

A Lightning batch is a ``data.Chunk`` of K mini-batches, one optimiser step each: K = 1
ordinarily; at a textbook's batch of 10, where Lightning's loop and callbacks around a
batch cost more than the step's arithmetic, the config gate chooses a larger K
(``model.chunk``, ``handprop.gate``). It is the same training whatever K is, bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from . import functional as HF
from .data import Chunk
from .gate import schedule_length
from .nn import MLP
from .optim import SDLM, curvature, l2_groups
from .steps import StepInProgress, rng_states, run_steps, set_rng_states


class DigitClassifier(L.LightningModule):
    """Reads 28×28 digits with an MLP whose gradients come from our own backward pass.

    Input: images as floats in [0, 1], (N, 1, 28, 28) or (N, 784). ``normalize=True``
    standardises them with the training set's pixel mean and standard deviation (buffers:
    a checkpoint evaluates without the training data); ``False`` feeds the raw pixels, as
    3Blue1Brown's and Nielsen's networks read them; ``"lecun"`` codes them as LeCun et al.
    1998 did, background -0.1 and ink 1.175.

    ``l2``: λ of Nielsen's cost C0 + λ/(2n) Σ w² (network2.py), the optimiser's weight
    decay λ/n on the weights only. ``compile``: torch.compile the network, the hand-written
    backward inside the graph. ``chunk``: mini-batches per Lightning batch (None: 1, unless
    the config gate chose). ``gradient_clip_val``: every step's gradient clipped to this
    norm (``gradient_clip_algorithm="value"``: each element), after the callbacks saw it.
    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_: true``) of
    parameters and of the optimiser; the schedule steps once per optimiser step, its
    length (OneCycleLR's ``total_steps``, CosineAnnealingLR's ``T_max``) left unset: the run's.
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
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
    ):
        super().__init__()
        hidden = list(hidden)
        # logger=False: train.py writes the whole run's config and final metrics to the
        # logger once (TensorBoard's HParams tab), not the model's arguments at the start
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.net = MLP([input_size, *hidden, num_classes], activation, output_activation, dropout, init, backward)
        self.automatic_optimization = False  # training_step takes every optimiser step itself
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.register_buffer("pixel_mean", torch.tensor(0.0))
        self.register_buffer("pixel_std", torch.tensor(1.0))
        self.pixel_stats_loaded = False  # True once load_weights brought a checkpoint's statistics
        self.net_compiled = False
        self.step_in_progress = StepInProgress()
        self.resumed_rng = None  # a checkpoint's random generators, until training resumes
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

    def setup(self, stage: str) -> None:
        stats = getattr(self.trainer.datamodule, "pixel_stats", None)
        if stage == "fit" and stats is not None and not self.pixel_stats_loaded:
            self.pixel_mean.fill_(stats[0])
            self.pixel_std.fill_(stats[1])
        if self.hparams.compile and not self.net_compiled:
            # In place: parameter names and checkpoints stay those of the eager network.
            # fullgraph: our autograd.Functions must trace whole, never fall back to eager.
            # fallback_random: dropout masks drawn by PyTorch's own generator, as in eager
            # mode, so that seeded runs and the gradient audit's replay see the same masks.
            self.net.compile(fullgraph=True, options={"fallback_random": True})
            self.net_compiled = True

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
        factories = {"optimizer": self.optimizer_factory, "scheduler": self.scheduler_factory}
        return {k: f and getattr(getattr(f, "func", f), "__name__", str(f)) for k, f in factories.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recipe"], checkpoint["optimisation"] = self.training_recipe(), "manual"  # (the gate reads it)
        # Dropout masks and augmentation draw from the global RNGs: their state as the step in
        # progress began, if one is (an interrupt), else now; a resume draws what the run would have.
        checkpoint["rng_states"] = self.step_in_progress.rng if self.step_in_progress.rng is not None else rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        try:  # put back if training resumes (on_train_start); not for a test's checkpoint
            self.resumed_rng = checkpoint.get("rng_states") if self.trainer.state.fn == "fit" else None
        except RuntimeError:  # not attached to a trainer (LightningModule.load_from_checkpoint)
            self.resumed_rng = None

    def on_train_start(self) -> None:
        if self.resumed_rng is not None:
            set_rng_states(self.resumed_rng)
            self.resumed_rng = None

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

    def output_and_loss(self, images: Tensor, labels: Tensor, eager: bool = False) -> tuple[Tensor, Tensor]:
        """The network's output and its cost for a batch, in one pass. ``eager``: bypass
        torch.compile (the gradient audit's reference runs eagerly)."""
        net = self.net.forward if eager else self.net
        return net(self.normalize(images), labels, self.hparams.loss, self.hparams.label_smoothing)

    def probabilities(self, out: Tensor) -> Tensor:
        """The network's outputs as class probabilities, the way its cost reads them
        (``functional.COSTS[loss].probabilities``)."""
        return HF.COSTS[self.hparams.loss].probabilities(out)

    @property
    def calibrated(self) -> bool:
        """Whether the outputs are class probabilities (a softmax), or only scores."""
        return HF.COSTS[self.hparams.loss].calibrated

    # -- training: one optimiser step per mini-batch

    def training_step(self, chunk, batch_idx: int) -> dict:
        """One optimiser step for each mini-batch of the chunk (or of a plain batch): forward and
        cost, the hand-written backward (called by the autograd engine), the step. Stops at
        trainer.max_steps, inside the chunk if need be (Lightning looks between batches)."""
        chunk = chunk if isinstance(chunk, Chunk) else Chunk(*chunk, batch_size=len(chunk[1]))
        optimizer, schedule, params = self.optimizers(), self.lr_schedulers(), self.net.weights_and_biases()
        first, last, every = self.trainer.global_step, self.trainer.max_steps, self.trainer.log_every_n_steps
        losses, outputs, logged = [], [], []
        for i in range(len(chunk) if last < 0 else min(len(chunk), last - first)):
            self.step_in_progress.begin(chunk, i)
            images, labels = chunk.mini_batch(i)
            out, loss = self.output_and_loss(images, labels)
            for p in params:  # the step before's gradient gone (optimizer.zero_grad(), less its profiling)
                p.grad = None
            self.manual_backward(loss)
            if every > 0 and (first + i + 1) % every == 0:  # Lightning's rule for the steps it logs
                logged.append((first + i, loss.detach(), optimizer.param_groups[0]["lr"]))
            optimizer.step()
            if schedule is not None:
                schedule.step()
            chunk.trained()
            self.step_in_progress.end()
            losses.append(loss.detach())
            outputs.append(out.detach())
        chunk.done()
        digits = sum(len(o) for o in outputs)
        if losses:  # the epoch's loss and accuracy, counted on the device (no host sync)
            sizes = torch.tensor([len(o) for o in outputs], device=self.device)
            self.metrics["train_loss"].update(torch.stack(losses), weight=sizes)
            self.metrics["train_acc"].update(torch.cat(outputs), chunk.labels[:digits])
        self._log_steps(logged)
        return {"digits": digits}

    def on_before_optimizer_step(self, optimizer) -> None:
        # after the callbacks (the audit, the numerics guard) have seen the step's own gradient
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, self.hparams.gradient_clip_val, self.hparams.gradient_clip_algorithm)

    def replay_step(self) -> tuple[Tensor, Tensor]:
        """The optimiser step in progress, for the gradient audit: the random generators put back
        to where it began, its mini-batch drawn again; a forward pass now draws its dropout
        masks. Fork the generators first (torch.random.fork_rng) to leave the run's alone."""
        set_rng_states(self.step_in_progress.rng)
        return self.step_in_progress.chunk.mini_batch(self.step_in_progress.index)

    def on_train_epoch_start(self) -> None:
        optimizer = self.optimizers(use_pl_optimizer=False)
        if isinstance(optimizer, SDLM):  # LeCun's h, measured before every pass
            split, epoch = self.trainer.datamodule.splits["train"], self.trainer.current_epoch
            optimizer.start_pass(epoch + 1, curvature(self, split.images, split.labels, optimizer.samples, epoch))

    # -- evaluation, and what every stage logs

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val")  # the outputs, for callbacks (TensorBoardPictures)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def _evaluate(self, batch, stage: str) -> Tensor:
        images, labels = batch
        out, loss = self.output_and_loss(images, labels)
        self.metrics[f"{stage}_loss"].update(loss, weight=len(labels))
        self.metrics[f"{stage}_acc"].update(out, labels)
        return out

    # Single steps' loss and learning rate go to the loggers on the steps they write and no
    # others (a self.log costs ~1 ms on a CPU); each epoch's means once, at its end.

    def _log_steps(self, steps: list[tuple[int, Tensor, float]]) -> None:
        """train/loss_step and train/lr of steps (step, loss, rate); the last loss in the bar."""
        if not steps:
            return
        if self.trainer.is_global_zero:
            losses = torch.stack([loss for _, loss, _ in steps]).tolist()  # one host sync
            for (step, _, lr), loss in zip(steps, losses):
                self._to_loggers({"train/loss_step": loss, "train/lr": lr}, step)
        self.log("train/loss_step", steps[-1][1], on_step=True, on_epoch=False, prog_bar=True, logger=False)

    def _log_epoch(self, stage: str) -> None:
        """The epoch's mean loss and accuracy, for the callbacks, and for the loggers at its last
        optimiser step (Lightning's own x-axis for epoch scalars counts chunks)."""
        loss, accuracy = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        if accuracy.update_called:  # (a run resumed at an epoch's very end counted nothing)
            # floats: compute() already summed every process's counts, nothing left to sync
            values = {f"{stage}/loss_epoch" if stage == "train" else f"{stage}/loss": loss.compute().item()}
            values[f"{stage}/acc"] = accuracy.compute().item()
            if stage == "train":  # callback_metrics are what spawned DDP workers hand back to the main process
                values["trainer/global_step"] = float(self.global_step)
            for key, value in values.items():
                self.log(key, value, prog_bar=key == "val/acc", logger=stage == "test")
            if stage != "test" and self.trainer.is_global_zero and not self.trainer.sanity_checking:
                self._to_loggers(values, max(self.global_step - 1, 0))
        loss.reset()
        accuracy.reset()

    def _to_loggers(self, values: dict[str, float], step: int) -> None:
        for logger in self.trainer.loggers:  # (train.py's run loggers; rank zero calls)
            logger.log_metrics(values, step=step)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- the optimiser and its schedule

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("DigitClassifier was built without an optimizer: pass optimizer=...")
        optimizer = self.optimizer_factory(params=self._parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        length = schedule_length(self.scheduler_factory, lambda: run_steps(self.trainer))
        scheduler = self.scheduler_factory(optimizer, **length)  # stepped by training_step, every optimiser step
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "name": "train/lr"}}

    def _parameter_groups(self):
        if not self.hparams.l2:
            return self.parameters()
        return l2_groups(self.net, self.hparams.l2, getattr(self.trainer.datamodule, "train_size", None))
