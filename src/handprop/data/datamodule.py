"""The LightningDataModule: splits, loaders and augmentation, as Lightning expects them."""

from __future__ import annotations

import functools

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..errors import DataError
from .augment import to_pixels
from .datasets import download, load_split
from .loader import Chunk, DeviceBatches, TensorBatches, _as_batch


def per_process_batch(batch_size: int, world: int) -> int:
    """``batch_size`` is the global batch: each of the ``world`` processes takes an equal share.
    The config gate checks it before any process starts; here it is checked again once the
    real number of processes is known (``trainer.devices=auto``, a torchrun launch)."""
    from ..gate.across import batch_problem  # noqa: PLC0415 -- (the gate's rules import the data module)

    problem = batch_problem(batch_size, world)
    if problem:
        raise DataError(problem)
    return batch_size // world


class DigitsDataModule(L.LightningDataModule):
    """28×28 digits for training, validation and test, as Lightning expects them.

    Batches are (images, labels): images float32 in [0, 1] of shape (N, 1, 28, 28),
    labels int64. ``pixel_stats`` holds the mean and standard deviation of the
    training pixels once ``setup("fit")`` ran; the model normalises with them and keeps
    them in its checkpoint.
    """

    def __init__(
        self,
        dataset: str = "sample",
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int | None = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        augment: dict | None = None,
        loader: str = "tensor",
        seed: int | None = 0,
    ):
        super().__init__()
        self.dataset, self.data_dir, self.download = dataset, data_dir, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.num_workers = val_size, split_seed, num_workers
        self.augment = {key: float(amount) for key, amount in (augment or {}).items() if amount}
        self.loader, self.seed = loader, seed
        self._on_device: dict = {}
        self._train_loader = None  # the latest training loader, whose position is checkpointed
        self._train_loader_state: dict | None = None
        self.splits: dict[str, TensorBatches] = {}
        self.pixel_stats: tuple[float, float] | None = None

    @property
    def train_size(self) -> int | None:
        """The number of training examples (all processes together), once set up for fit."""
        return len(self.splits["train"]) if "train" in self.splits else None

    def prepare_data(self) -> None:  # rank zero only
        if self.download and self.dataset != "sample":
            download(self.dataset, self.data_dir)

    def setup(self, stage: str) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        for split in wanted:
            if split not in self.splits:
                images, labels = load_split(self.dataset, split, self.data_dir, self.val_size, self.split_seed)
                self.splits[split] = TensorBatches(images, labels)
        if stage == "fit":
            pixels = self.splits["train"].images.double() / 255
            self.pixel_stats = (pixels.mean().item(), pixels.std().item())

    def _loader(self, split: str, shuffle: bool):
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        if shuffle:
            batch_size = per_process_batch(self.batch_size, world)
        data = self.splits[split]
        if self.loader == "dataloader":  # Lightning adds a DistributedSampler under DDP
            return DataLoader(
                data,
                batch_size,
                shuffle=shuffle,
                num_workers=self.num_workers,
                collate_fn=_as_batch,
                persistent_workers=self.num_workers > 0,
            )
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        key = (split, str(device))
        if key not in self._on_device:  # the split is copied to the device once, as uint8
            self._on_device[key] = (data.images.to(device), data.labels.to(device))
        images, labels = self._on_device[key]
        seed = self.seed if self.seed is not None else torch.initial_seed()
        # training shards are cut to one length (same number of batches on every rank);
        # evaluation shards are not, so that every sample is evaluated exactly once
        chunk = None  # evaluation: plain batches
        if shuffle:  # training: chunks of mini-batches, as many as the model was told (the config gate's choice)
            chunk = (trainer.lightning_module.hparams.get("chunk") if trainer is not None else None) or 1
        return DeviceBatches(images, labels, batch_size, shuffle, seed, rank, world, even_shards=shuffle, chunk=chunk)

    def train_dataloader(self):
        self._train_loader = self._loader("train", shuffle=True)
        if self._train_loader_state and isinstance(self._train_loader, DeviceBatches):
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    # The training loader's position travels in checkpoints through these two hooks as well
    # as through Lightning's own loader state: Lightning restores the data module before it
    # first builds the loader (which configure_optimizers can trigger early, when a schedule
    # asks for the run's length), but restores loader states only into a loader built later.
    def state_dict(self) -> dict:
        loader = self._train_loader
        return {"train_loader": loader.state_dict()} if isinstance(loader, DeviceBatches) else {}

    def load_state_dict(self, state: dict) -> None:
        self._train_loader_state = state.get("train_loader")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the training device: uint8 images -> pixels in [0, 1]. A training batch is a
        Chunk of mini-batches (a DataLoader's batch becomes a chunk of one), whose
        augmentation is drawn mini-batch by mini-batch as the model trains them."""
        training = self.trainer is not None and self.trainer.training
        if not training:
            images, labels = batch
            return to_pixels(images), labels
        if not isinstance(batch, Chunk):
            batch = Chunk(*batch, batch_size=len(batch[1]))
        if self.augment:
            batch.prepare = functools.partial(to_pixels, augment=self.augment)
        else:  # the whole chunk's pixels at once
            batch.images = to_pixels(batch.images)
        return batch
