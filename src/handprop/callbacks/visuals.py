"""What TensorBoard shows of a run besides the curves: per-layer scalars and the pictures."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from ..data import to_pixels
from ..module import logs_this_step, steps_taken
from ..pictures import LandscapePlane, confusion_figure, cost_surface, landscape_figure, mistakes_figure, weight_grid
from ..rules import POSITIVE_INT, POSITIVE_INT_OR_NULL, is_int, is_number, positive_int, require


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
        require(
            every_n_steps is None or positive_int(every_n_steps), "every_n_steps", every_n_steps, POSITIVE_INT_OR_NULL
        )
        self.every_n_steps = every_n_steps
        self._before: list[torch.Tensor] | None = None  # the weights before a logged step
        self._grad_norms: torch.Tensor | None = None
        self._pending_step: int | None = None  # the logged step, until it has been taken

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._samples, self._pending_step = time.perf_counter(), 0, None

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts without an epoch start

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not logs_this_step(trainer, self.every_n_steps):
            return
        layers = _layers(pl_module)
        grads = [
            p.grad if p.grad is not None else torch.zeros_like(p)
            for layer in layers
            for p in (layer.weight, layer.bias)
        ]
        norms = torch.stack(torch._foreach_norm(grads)).float().view(len(layers), 2).norm(dim=1)  # |dW, db|
        self._grad_norms = norms
        # the weights before the step, copied into buffers kept from step to step
        if self._before is None or [w.shape for w in self._before] != [layer.weight.shape for layer in layers]:
            self._before = [layer.weight.detach().clone() for layer in layers]
        else:
            torch._foreach_copy_(self._before, [layer.weight.detach() for layer in layers])
        self._pending_step = steps_taken(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.automatic_optimization:
            self._samples += len(batch[1])
        else:  # a chunk: the digits of the steps it took (max_steps may cut it short)
            self._samples += min(len(batch.labels), len(outputs["loss"]) * batch.batch_size)
        self._trained = time.perf_counter()  # the epoch's training ends here, before validation
        if pl_module.automatic_optimization:  # (a chunk of mini-batches calls it per step)
            self.on_optimizer_step_end(trainer, pl_module)

    def on_optimizer_step_end(self, trainer, pl_module, loss=None) -> None:
        if self._pending_step is None or steps_taken(trainer) <= self._pending_step:  # (not taken yet)
            return
        layers = _layers(pl_module)
        after = [layer.weight.detach() for layer in layers]
        change = torch._foreach_norm(torch._foreach_sub(after, self._before))
        ratios = torch.stack(change) / torch.stack(torch._foreach_norm(self._before)).clamp_min(1e-12)
        names = [f"{kind}/layer{i}" for kind in ("grad_norm", "update_ratio") for i in range(1, len(layers) + 1)]
        _write_scalars(trainer, dict(zip(names, torch.cat([self._grad_norms, ratios.float()]))), self._pending_step)
        self._pending_step = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._samples:  # (a resumed run at an epoch's very end)
            return
        samples = self._samples * trainer.world_size  # every process trains its own shard
        seconds = torch.tensor([time.perf_counter() - self._start, samples / (self._trained - self._start)])
        _write_scalars(
            trainer, {"time/epoch_s": seconds[0], "throughput/samples_per_s": seconds[1]}, trainer.global_step - 1
        )


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
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("histograms_every_n_epochs", histograms_every_n_epochs),
            ("max_neurons", max_neurons),
            ("landscape_samples", landscape_samples),
        ):
            require(positive_int(value), name, value, POSITIVE_INT)
        require(is_int(max_mistakes) and max_mistakes >= 0, "max_mistakes", max_mistakes, "must be an integer >= 0")
        require(
            is_int(landscape_points) and landscape_points >= 2,
            "landscape_points",
            landscape_points,
            "must be an integer >= 2",
        )
        require(
            is_number(landscape_span) and landscape_span > 0,
            "landscape_span",
            landscape_span,
            "must be a positive number",
        )
        self.every_n_epochs, self.histograms_every_n_epochs = every_n_epochs, histograms_every_n_epochs
        self.max_neurons, self.max_mistakes = max_neurons, max_mistakes
        self.landscape, self.landscape_points, self.landscape_span = landscape, landscape_points, landscape_span
        self.landscape_samples, self.save_dir, self.seed = landscape_samples, save_dir, seed
        self._plane = None
        self._collect = False

    # -- where pictures go

    @staticmethod
    def _writer(trainer):

        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _publish(self, trainer, tag: str, picture, final: bool = True) -> None:
        """A figure or a (3, H, W) image tensor -> TensorBoard, and when ``final`` (the last
        epoch's, the landscape) to ``save_dir/<name>.png``."""
        import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

        name = tag.split("/")[-1]
        if self.save_dir is not None and final:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            path = Path(self.save_dir) / f"{name}.png"
            if isinstance(picture, torch.Tensor):
                from torchvision.utils import save_image  # noqa: PLC0415 -- torchvision loads only when a picture is drawn

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

        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_classes)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.landscape:
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

        train = getattr(trainer.datamodule, "splits", {}).get("train")
        if train is None:
            return
        pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(self.seed))[
            : self.landscape_samples
        ]
        images = to_pixels(train.images[pick]).to(pl_module.device)
        labels = train.labels[pick].to(pl_module.device)
        weights = [layer.weight for layer in _layers(pl_module)]
        was_training = pl_module.training
        pl_module.eval()
        try:
            coords, surface = cost_surface(
                weights,
                self._plane.directions(weights),
                lambda: pl_module.output_and_loss(images, labels, eager=True)[1],
                span=self.landscape_span,
                points=self.landscape_points,
            )
        finally:
            pl_module.train(was_training)
        path = self._plane.path(weights)
        title = f"training cost around the trained weights ({self.landscape_samples} digits)"
        self._publish(trainer, "pictures/cost_landscape", landscape_figure(coords, surface, path, title))
