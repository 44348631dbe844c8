"""The training system: the MLP, its cost, its metrics and its optimiser, for Lightning."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from . import functional as HF
from .errors import HandpropError
from .nn import MLP
from .rules import POSITIVE_INT, SettingError, is_int, is_number, positive_int, require


class ScheduleError(HandpropError):
    """A resumed run asks for more steps than the checkpoint's schedule has."""


class DigitClassifier(L.LightningModule):
    """Reads 28×28 digits with an MLP whose gradients come from our own backward pass.

    Input: images as floats in [0, 1], shape (N, 1, 28, 28) or (N, 784). With
    ``normalize=True`` they are standardised with the training set's pixel mean and
    standard deviation, which the data module provides at fit time and the checkpoint
    keeps (buffers), so that a checkpoint evaluates and predicts without the training
    data; ``normalize=False`` feeds the raw [0, 1] pixels, as 3Blue1Brown's and Nielsen's
    networks read them.

    ``l2`` is λ of Nielsen's L2-regularised cost (network2.py), C = C0 + λ/(2n) Σ w², over
    the weights (not the biases), n the number of training examples: the optimiser's
    weight decay λ/n on the weights only, with n read from the data module at fit time.
    That is L2 exactly for optimisers whose weight decay is added to the gradient (SGD,
    Adam); AdamW's is decoupled from the gradient, not this cost, and is refused.

    ``compile=True`` compiles the network with torch.compile, the hand-written backward
    passes inside the graph.

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
        normalize: bool = True,
        l2: float = 0.0,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
    ):
        super().__init__()
        hidden = list(hidden)
        require(positive_int(input_size), "input_size", input_size, POSITIVE_INT)
        require(is_int(num_classes) and num_classes >= 2, "num_classes", num_classes, "must be an integer >= 2")
        HF.check_cost(loss, label_smoothing)
        _check_l2(l2, optimizer)
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
        steps = self.trainer.estimated_stepping_batches
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
        if states is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(states["torch"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def normalize(self, images: Tensor) -> Tensor:
        """Pixels in [0, 1] -> flat vectors with the training set's mean 0 and std 1
        (or the raw pixels, flattened, with ``normalize=False``)."""
        if not self.hparams.normalize:  # (older checkpoints get __init__'s default, True)
            return images.flatten(1)
        return (images.flatten(1) - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.normalize(images))

    def probabilities(self, out: Tensor) -> Tensor:
        """The network's outputs as class probabilities, the way its cost reads them
        (``functional.COSTS[loss].probabilities``)."""
        return HF.COSTS[self.hparams.loss].probabilities(out)

    def output_and_loss(self, images: Tensor, labels: Tensor, eager: bool = False) -> tuple[Tensor, Tensor]:
        """The network's output and its cost for a batch, in one pass. ``eager``: bypass
        torch.compile (the gradient audit's reference runs eagerly)."""
        net = self.net.forward if eager else self.net
        return net(self.normalize(images), labels, self.hparams.loss, self.hparams.label_smoothing)

    # Metrics. Each batch's loss and hits are counted on the device (torchmetrics' update:
    # no per-batch value, no host sync); each epoch's mean loss and accuracy are logged once,
    # at its end, where compute() also sums the counts of all DDP processes. The training
    # loss of a single step goes to the logger only on the steps the logger writes
    # (trainer.log_every_n_steps): Lightning's self.log costs ~1 ms a call on a CPU, more than
    # a whole step of the default network's matrix products.

    def _step(self, batch, stage: str) -> tuple[Tensor, Tensor]:
        images, labels = batch
        out, loss = self.output_and_loss(images, labels)
        self.metrics[f"{stage}_loss"].update(loss.detach(), weight=len(labels))
        self.metrics[f"{stage}_acc"].update(out.detach(), labels)
        if stage == "train" and logs_this_step(self.trainer):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return out, loss

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
        return self._step(batch, "train")[1]

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")[0].detach()  # the outputs, for callbacks (TensorBoardPictures)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

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
        # "name" is the tag LearningRateMonitor logs the learning rate under.
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
        return schedule_length(self.scheduler_factory, lambda: int(self.trainer.estimated_stepping_batches))


def logs_this_step(trainer: L.Trainer, every_n_steps: int | None = None) -> bool:
    """Before optimiser step k (trainer.global_step == k, counted from 0): whether step k is
    one to log, (k + 1) % n == 0 -- Lightning's own rule for writing step scalars with
    n = trainer.log_every_n_steps (the default); never when n == 0."""
    n = trainer.log_every_n_steps if every_n_steps is None else every_n_steps
    return n > 0 and (trainer.global_step + 1) % n == 0


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
