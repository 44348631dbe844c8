"""What TensorBoard shows of a run besides the curves: the pictures (the per-layer scalars: ``scalars.py``)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torchmetrics.classification import MulticlassConfusionMatrix

from ..data import seeded_digits, to_pixels
from ..pictures import (
    DescentPath,
    backprop_figure,
    confusion_figure,
    cost_surface_of,
    descent_figure,
    descent_grid,
    figure_png,
    mistakes_figure,
    nudges_of,
    weights_figure,
)
from .scalars import layers_of
from .stopping import EarlyStopping


class TensorBoardPictures(Callback):
    """3Blue1Brown's pictures of a run, in TensorBoard (and as PNG files in ``save_dir``).

    Every ``every_n_epochs`` epochs and after the last one (the last validated: also a
    run stopped early), from the validation pass:
      visuals/first_layer_weights  up to ``max_neurons`` hidden neurons' 784 incoming
                                   weights, each as a 28x28 picture on one shared colour
                                   scale (red +, blue -): what each neuron looks for
      visuals/confusion_matrix     true vs predicted digit over the validation set,
                                   counts on a log colour scale, "k mistakes of N"
      visuals/mistakes             up to ``max_mistakes`` misread validation digits, each
                                   "true 3 → predicted 5" with p(5) -- or output(5) where
                                   the outputs are no probabilities (the quadratic cost)
    every ``histograms_every_n_epochs`` epochs, per layer: histograms of weights, biases
    and their gradients (``weights/layer<i>/weight``, ``weights/layer<i>/weight_grad``,
    ``.../bias``, ``.../bias_grad``); and when training ends:
      visuals/backprop             backpropagation for one validation digit (the first):
                                   the output against the desired one, the nudges of every
                                   layer, the first-layer weight changes it asks for, and
                                   their average over a mini-batch of training digits --
                                   when training starts (an untrained network) and ends
      visuals/descent              gradient descent down the cost: the optimiser's path
                                   through every weight and bias, on the plane the path
                                   spans most, over the training cost there (Li et al.
                                   2018, section 7; ``pictures/landscape.py``)
    (``visuals/`` sorts after ``train/`` and ``val/``: TensorBoard's first screen opens on
    the curves.) Titles give 1-based epochs, as the progress bar and train.log do. The PNG
    files are named for the pictures: ``first_layer_weights.png``, ...

    The descent picture keeps up to ``descent_snapshots`` evenly spaced copies of the
    weights from the start of the run (``pictures.DescentPath``), and measures the training
    cost (no dropout, no augmentation) on ``descent_samples`` training digits over a
    ``descent_points``² grid. Pictures are drawn by process zero only; the
    confusion matrix counts every process's share of the validation set.
    """

    def __init__(
        self,
        every_n_epochs: int = 40,
        histograms_every_n_epochs: int = 20,
        max_neurons: int = 64,
        max_mistakes: int = 32,
        backprop: bool = True,
        descent: bool = True,
        descent_points: int = 13,
        descent_samples: int = 128,
        descent_snapshots: int = 32,
        save_dir: str | None = None,
        seed: int = 0,
    ):
        self.every_n_epochs, self.histograms_every_n_epochs = every_n_epochs, histograms_every_n_epochs
        self.max_neurons, self.max_mistakes = max_neurons, max_mistakes
        self.backprop, self.descent, self.descent_points = backprop, descent, descent_points
        self.descent_samples, self.descent_snapshots = descent_samples, descent_snapshots
        self.save_dir, self.seed = save_dir, seed
        self._path: DescentPath | None = None
        self._collect = False
        self._undrawn: tuple | None = None  # (epoch, confusion matrix, mistakes) of a validated epoch not drawn yet
        self._latest: dict = {}  # name -> the latest picture, PNG bytes

    # -- where pictures go

    @staticmethod
    def _writer(trainer):

        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _publish(self, trainer, name: str, figure) -> None:
        """A figure -> TensorBoard as ``visuals/<name>``; the latest of each name goes to
        ``save_dir/<name>.png`` when training ends (``_save``). Drawn once and encoded
        as PNG once: TensorBoard's image record and the file hold the same bytes."""
        png, height, width = figure_png(figure)
        self._latest[name] = png
        writer = self._writer(trainer)
        if writer is not None:
            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
            summary = Summary(value=[Summary.Value(tag=f"visuals/{name}", image=image)])
            # (what SummaryWriter.add_image writes, less its second encoding of the pixels)
            writer.file_writer.add_summary(summary, trainer.global_step)

    # -- hooks

    def setup(self, trainer, pl_module, stage: str) -> None:

        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_classes)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.backprop and trainer.is_global_zero and trainer.global_step == 0:
            self._draw_backprop(trainer, pl_module, "untrained")
        if self.descent and trainer.is_global_zero:
            self._path = DescentPath(self.descent_snapshots)
            self._record_path(trainer, pl_module)  # where this run starts

    @staticmethod
    def _due(trainer, every_n_epochs: int) -> bool:
        """This epoch is one to draw: every n-th, and the last."""
        epoch = trainer.current_epoch + 1
        return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs

    def _record_path(self, trainer, pl_module) -> None:
        self._path.record(trainer.global_step, pl_module.net.weights_and_biases())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._path is not None:
            self._record_path(trainer, pl_module)
        # The epoch's last batch: its gradients are still there (Lightning clears them
        # before validation, which runs before on_train_epoch_end).
        if batch_idx + 1 == trainer.num_training_batches and trainer.is_global_zero:
            if self._due(trainer, self.histograms_every_n_epochs):
                self._write_histograms(trainer, pl_module)

    def _write_histograms(self, trainer, pl_module) -> None:
        writer = self._writer(trainer)
        if writer is None:
            return
        for i, layer in enumerate(layers_of(pl_module), 1):
            for kind, p in (("weight", layer.weight), ("bias", layer.bias)):
                # 64 even bins: TensorBoard's default ("tensorflow", ~1,500 buckets) takes 3x as long
                tag = f"weights/layer{i}/{kind}"
                writer.add_histogram(tag, p.detach().float(), trainer.global_step, bins=64)
                if p.grad is not None:
                    writer.add_histogram(f"{tag}_grad", p.grad.float(), trainer.global_step, bins=64)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # a picture epoch's counts; every epoch's while early stopping may end the run on
        # one that is not (drawn when training ends)
        may_stop = any(isinstance(c, EarlyStopping) and c.enabled for c in trainer.callbacks)
        self._collect = not trainer.sanity_checking and (may_stop or self._due(trainer, self.every_n_epochs))
        self._mistakes: list[tuple] = []
        if self._collect:
            self._confusion = self._confusion.to(pl_module.device)  # (setup ran before the model moved there)
            self._confusion.reset()

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
            if not pl_module.calibrated:  # the output neuron's own value
                confidence = outputs.float().gather(1, predicted[:, None])[:, 0]
            self._mistakes.append(tuple(t[wrong].cpu() for t in (images, labels, predicted, confidence)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._collect:
            return
        matrix = self._confusion.compute()  # on every process: sums their counts
        if not trainer.is_global_zero:
            return
        self._undrawn = (trainer.current_epoch + 1, matrix, self._mistakes)
        if self._due(trainer, self.every_n_epochs):
            self._draw_validation(trainer, pl_module)

    def _draw_validation(self, trainer, pl_module) -> None:
        """The weights, confusion matrix and mistakes of the latest validated epoch."""
        epoch, matrix, collected = self._undrawn  # epochs 1-based, as the progress bar counts
        self._undrawn = None
        layers = layers_of(pl_module)
        neurons = "hidden neurons" if len(layers) > 1 else "output neurons"
        figure = weights_figure(layers[0].weight, epoch, max_neurons=self.max_neurons, neurons=neurons)
        self._publish(trainer, "first_layer_weights", figure)
        self._publish(trainer, "confusion_matrix", confusion_figure(matrix, epoch))
        if self.max_mistakes:
            matrix = matrix.cpu()
            total, mistakes = int(matrix.sum()), int(matrix.sum() - matrix.trace())
            shown = [torch.cat(t) for t in zip(*collected)] if collected else [torch.zeros(0)] * 4
            images, labels, predicted, scores = shown
            figure = mistakes_figure(
                images,
                labels,
                predicted,
                scores,
                epoch,
                mistakes=mistakes,
                total=total,
                as_probabilities=pl_module.calibrated,
            )
            self._publish(trainer, "mistakes", figure)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self._undrawn is not None:  # the last validated epoch, when it was not a picture epoch
            self._draw_validation(trainer, pl_module)
        if self.backprop:
            self._draw_backprop(trainer, pl_module, f"after {trainer.global_step:,} steps")
        if self._path is not None:
            self._draw_descent(trainer, pl_module)
        self._save()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if trainer.is_global_zero:
            self._save()  # what was drawn before the run stopped

    def _save(self) -> None:
        """The latest picture of each kind as ``save_dir/<name>.png`` (a run that ends at
        max_steps, or without validating in its last epoch, still leaves them)."""
        if self.save_dir is None or not self._latest:
            return
        Path(self.save_dir).mkdir(parents=True, exist_ok=True)
        for name, png in self._latest.items():
            (Path(self.save_dir) / f"{name}.png").write_bytes(png)

    def _training_digits(self, train, n: int, device) -> tuple:
        """``n`` training digits drawn by ``seed``, as pixels (no augmentation), and their labels."""
        return tuple(t.to(device) for t in seeded_digits(train.images, train.labels, n, self.seed))

    def _draw_backprop(self, trainer, pl_module, when: str) -> None:
        splits = getattr(trainer.datamodule, "splits", {})
        val, train = splits.get("val"), splits.get("train")
        if val is None or train is None or not len(val.labels):
            return
        size = min(getattr(trainer.datamodule, "batch_size", 128), len(train.labels))  # the global mini-batch
        digit = to_pixels(val.images[:1]).to(pl_module.device)
        batch, labels = self._training_digits(train, size, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            one = nudges_of(pl_module, digit, val.labels[:1].to(pl_module.device))
            many = nudges_of(pl_module, batch, labels)
        finally:
            pl_module.train(was_training)
        figure = backprop_figure(
            digit[0],
            int(val.labels[0]),
            one,
            many,
            size,
            when,
            pl_module.calibrated,
            activations=pl_module.net.activations,
        )
        self._publish(trainer, "backprop", figure)

    def _draw_descent(self, trainer, pl_module) -> None:
        train = getattr(trainer.datamodule, "splits", {}).get("train")
        params = pl_module.net.weights_and_biases()
        self._path.record(trainer.global_step, params)
        plane = self._path.plane(params)
        if train is None or plane is None:
            return
        directions, path, explained = plane
        images, labels = self._training_digits(train, self.descent_samples, pl_module.device)
        along = [
            [
                d.view_as(p).to(device=p.device, dtype=p.dtype)
                for d, p in zip(direction.split([p.numel() for p in params]), params)
            ]
            for direction in directions
        ]
        alphas, betas = descent_grid(path, self.descent_points)
        surface = cost_surface_of(pl_module, images, labels, along, alphas, betas)
        title = f"gradient descent down the training cost ({len(labels)} training digits)"
        steps = [*self._path.steps, trainer.global_step]
        self._publish(trainer, "descent", descent_figure(alphas, betas, surface, path, explained, steps, title))
