"""Batches for the training loop: split tensors fetched a batch at a time, or held whole on
the training device and sliced there (DeviceBatches)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

LOADERS = ("tensor", "dataloader")  # DeviceBatches, or torch's DataLoader


class TensorBatches(Dataset):
    """Images and labels held in memory, fetched a whole batch at a time.

    ``__getitems__`` lets the DataLoader index the tensors once per batch instead of
    once per sample and then stacking: the per-sample path costs more than the
    network's forward pass for an MLP this small.
    """

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx]


def _as_batch(batch):
    return batch  # __getitems__ already returns a stacked (images, labels) pair


class Chunk:
    """One Lightning training batch: K consecutive mini-batches (K = 1 ordinarily), which the
    model trains one optimiser step each. Their images and labels lie end to end, mini-batch
    i being rows [i * batch_size, (i + 1) * batch_size). ``prepare`` turns a mini-batch's
    uint8 images into pixels (augmentation drawn per mini-batch, in the order the steps
    take them); None when ``images`` already are pixels. ``loader``: the DeviceBatches it
    came from, told of every mini-batch trained (its position for a resume); None for a
    DataLoader's batch."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, prepare=None, loader=None):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.prepare, self.loader = prepare, loader

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def mini_batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Mini-batch i: its pixels (drawn now, where augmentation draws) and labels."""
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        images = self.images[rows]
        return (images if self.prepare is None else self.prepare(images)), self.labels[rows]

    def trained(self) -> None:
        """Mini-batch after mini-batch, as each optimiser step is taken."""
        if self.loader is not None:
            self.loader.mark_consumed()

    def done(self) -> None:
        """When the model has finished with it (all its steps, or as many as max_steps allowed)."""
        if self.loader is not None:
            self.loader.mark_chunk_done()


class DeviceBatches:
    """Mini-batches cut from a split that lives whole on the training device.

    The split is one uint8 image tensor and one label tensor on the device. Each epoch
    draws a permutation on the device from a generator seeded with (seed, epoch), so an
    epoch's order depends on nothing else, and slices it into batches: no per-sample
    Python, no copies to the device, no worker processes.

    Under data parallelism (``world_size`` > 1) every rank draws the same permutation and
    takes every world_size-th index from position ``rank`` on. With ``even_shards``
    (training) the shards are cut to one length -- the at most world_size - 1 left over
    change from epoch to epoch -- so every rank runs the same number of batches; without
    (evaluation) every sample is visited exactly once. Lightning injects
    no DistributedSampler into an iterable like this one: the sharding is ours.

    Stateful for exact mid-epoch resume: ``state_dict()`` records the epoch and how many
    of its mini-batches the model has trained (``mark_consumed`` -- counting what the
    model trained rather than what was produced keeps Lightning's one-batch prefetch out
    of the count, and a chunk stopped inside itself counts only its steps taken);
    ``load_state_dict`` makes the next pass over that epoch skip exactly those. The state
    travels in Lightning's checkpoints (see DigitsDataModule.state_dict), and Lightning
    calls ``set_epoch`` (through ``.sampler``, its protocol for samplers) at the start of
    every epoch.

    For training (``chunk`` given) it hands out Chunks of K mini-batches (the last of an
    epoch may hold fewer): Lightning sees one batch per chunk, ``len()`` counts chunks,
    and the model trains each mini-batch as its own optimiser step, calling
    ``mark_consumed`` (through ``Chunk.trained``) for every one and ``mark_chunk_done`` at
    the chunk's end. A run resumed inside an epoch (stopped by max_steps or an interrupt,
    inside a chunk or not) gets the rest of the epoch in chunks of K, the last ones joined
    if Lightning, which counts the epoch's batches, has fewer left for it.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = True,
        chunk: int | None = None,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.even_shards = rank, world_size, even_shards
        self.chunk = chunk or 1
        self.as_chunks = chunk is not None  # training; else plain (images, labels) batches
        self.epoch, self.consumed, self._skip = 0, 0, 0
        self.chunks_done, self._skip_chunks = 0, 0  # chunks the model finished this epoch
        self.sampler, self.batch_sampler = self, None  # where Lightning looks for set_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed, self._skip = epoch, 0, 0
            self.chunks_done, self._skip_chunks = 0, 0

    def _shard_size(self) -> int:
        n = len(self.labels)
        return n // self.world_size if self.even_shards else len(range(self.rank, n, self.world_size))

    @property
    def steps_per_epoch(self) -> int:
        """Mini-batches (optimiser steps) per epoch."""
        return math.ceil(self._shard_size() / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.steps_per_epoch / self.chunk)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in order, on the device."""
        n, device = len(self.labels), self.labels.device
        if self.shuffle:
            g = torch.Generator(device=device).manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
            order = torch.randperm(n, generator=g, device=device)
        else:
            order = torch.arange(n, device=device)
        return order[self.rank :: self.world_size][: self._shard_size()]

    def __iter__(self):
        idx, size, n, k = self.indices(), self.batch_size, self.steps_per_epoch, self.chunk
        start, self._skip = self._skip, 0
        self.consumed, self.chunks_done, self._skip_chunks = start, self._skip_chunks, 0
        ends = list(range(start + k, n, k)) + [n] if start < n else []
        # Lightning ends the epoch after len(self) batches: a resumed epoch's rest must come in
        # no more chunks than it has left of them (fewer end it early, at the loader's end)
        left = len(self) - self.chunks_done
        while 0 < left < len(ends):
            del ends[-2]  # the last two chunks become one
        for b, e in zip([start, *ends[:-1]], ends):
            batch = idx[b * size : e * size]
            if self.as_chunks:
                yield Chunk(self.images[batch], self.labels[batch], size, loader=self)
            else:
                yield self.images[batch], self.labels[batch]

    def mark_consumed(self) -> None:
        self.consumed += 1

    def mark_chunk_done(self) -> None:
        self.chunks_done += 1

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "size": len(self.labels),
            "chunk": self.chunk,
            "chunks_done": self.chunks_done,  # Lightning's batches so far
        }

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.labels) or state["seed"] != self.seed:
            raise DataError(
                f"the checkpoint's data loader state is for {state['size']} samples with seed {state['seed']}, "
                f"this run has {len(self.labels)} samples with seed {self.seed}: resume with the same data and seed"
            )
        self.epoch, self.consumed, self._skip = state["epoch"], state["consumed"], state["consumed"]
        # Lightning's batches of the epoch so far (a run resumed inside an epoch keeps its
        # chunk size: the config gate sees to it)
        self._skip_chunks = state.get("chunks_done", state["consumed"])
