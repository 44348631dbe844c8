"""Digits in, batches out: IDX files, dataset splits and the LightningDataModule.

Datasets (``dataset=``):
  sample         the 5,000 real MNIST digits embedded in the package (assets/), split
                 stratified and always the same way into 4,000 train / 500 val / 500 test
  mnist          full MNIST, 60k train (a stratified ``val_size`` of it held out) / 10k test
  fashion_mnist  full Fashion-MNIST, the same shapes

The full datasets are read from torchvision's layout ``<data_dir>/MNIST/raw/`` and
``<data_dir>/FashionMNIST/raw/`` (or the four files directly in ``data_dir``, as Debian's
dataset-fashion-mnist installs them), plain or gzipped. Nothing is downloaded unless
``download=True``. Each stage reads only the files it needs: evaluating needs only the
test files.

Batches leave the DataLoader as uint8 images and are turned into floats in [0, 1]
(and jittered, while training) on the training device, in ``on_after_batch_transfer``.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import tempfile
from importlib import resources
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import HandpropError

SAMPLE_SPLIT = {"val": 500, "test": 500}  # the remaining 4,000 sample digits train
RAW_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
DATASETS = ("sample", *RAW_FOLDER)
LOADERS = ("tensor", "dataloader")  # DeviceBatches, or torch's DataLoader
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
AUGMENTATIONS = ("rotation", "scale", "shift", "flip", "elastic", "elastic_sigma")  # random_affine's
_IDX_DTYPES = {0x08: torch.uint8}  # the only element type the digit datasets use


class DataError(HandpropError):
    """A data file or directory is missing, truncated or not what it claims to be."""


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (gzipped or not) into a uint8 tensor, checking it thoroughly.

    IDX: two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the number
    of dimensions, one big-endian uint32 per dimension, then the data.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}. Replace it with an intact copy.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'},"
            " expected 0000080N). Replace it with the original dataset file."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated or declares {ndim} dimensions.")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(
            f"{path}: header declares shape {dims} ({expected} bytes) but the file holds "
            f"{len(raw)} bytes: it is truncated or corrupt. Replace it with an intact copy."
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(dims)


def write_idx(path: str | Path, data: Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzipped when the name ends in .gz)."""
    path = Path(path)
    data = data.to(torch.uint8).contiguous()
    header = bytes([0, 0, 0x08, data.dim()]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    raw = header + data.numpy().tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def read_images_labels(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    """A pair of IDX files: (N, 28, 28) uint8 images and (N,) int64 labels, checked to agree."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3:
        raise DataError(f"{images_path}: expected images of shape (N, rows, cols), got {list(images.shape)}")
    if labels.dim() != 1:
        raise DataError(f"{labels_path}: expected labels of shape (N,), got {list(labels.shape)}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels: "
            "the two files do not belong together."
        )
    if len(labels) and int(labels.max()) > 9:
        raise DataError(f"{labels_path}: labels must be digits 0-9, found {int(labels.max())}")
    return images, labels.long()


# --------------------------------------------------------------------------- datasets


def sample_files() -> tuple[Path, Path]:
    """The embedded MNIST sample (see assets/mnist-sample/README.md for its license)."""
    root = resources.files("handprop") / "assets" / "mnist-sample"
    return Path(str(root / f"{FILES['train'][0]}.gz")), Path(str(root / f"{FILES['train'][1]}.gz"))


def find_raw_files(dataset: str, data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Locate a split's two IDX files for a full dataset, or say exactly what is missing."""
    data_dir = Path(data_dir)
    folders = [data_dir / RAW_FOLDER[dataset] / "raw", data_dir]
    found = []
    for stem in FILES[split]:
        candidates = [folder / (stem + ext) for folder in folders for ext in ("", ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(
                f"{dataset}: missing {stem}[.gz] in {folders[0]} (data.data_dir={data_dir}). "
                f"Put the {split} files there, or set data.download=true to fetch them "
                "(needs network)."
            )
        found.append(path)
    return found[0], found[1]


def download(dataset: str, data_dir: str | Path) -> None:
    """Fetch a full dataset with torchvision into torchvision's layout under data_dir.

    Nothing half-written is ever left in data_dir: torchvision downloads into a temporary
    folder inside it (the same file system), where every file is checked -- its MD5 by
    torchvision, its IDX header and size by ``read_images_labels`` -- and only then is each
    file renamed into ``<data_dir>/<Dataset>/raw/``, an atomic step. A failure (offline, a
    dropped connection, a full disk) removes the temporary folder, and data_dir too if this
    call made it."""
    from torchvision import datasets

    data_dir = Path(data_dir)
    try:
        for split in FILES:
            find_raw_files(dataset, data_dir, split)
        return  # already there
    except DataError:
        pass
    raw = data_dir / RAW_FOLDER[dataset] / "raw"
    made_dir, moved = not data_dir.exists(), []
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=data_dir) as tmp:
            cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[dataset]
            cls(tmp, train=True, download=True)  # torchvision fetches both splits' files
            for split in FILES:
                read_images_labels(*find_raw_files(dataset, tmp, split))
            raw.mkdir(parents=True, exist_ok=True)
            for path in sorted((Path(tmp) / RAW_FOLDER[dataset] / "raw").iterdir()):
                os.replace(path, raw / path.name)
                moved.append(path.name)
    except Exception as e:  # torchvision raises several kinds when offline
        if made_dir and data_dir.is_dir() and not any(data_dir.iterdir()):
            data_dir.rmdir()
        reason = " ".join(str(e).split())
        names = ", ".join(f"{stem}.gz" for split in FILES.values() for stem in split)
        raise DataError(
            f"could not download {dataset} into {data_dir}: {reason[:500]}. Offline? Fetch the four files "
            f"({names}) on a machine with network, copy them into {raw}, and run with data.download=false. "
            + (f"Already in place, complete: {', '.join(moved)}." if moved else f"Nothing was written to {data_dir}.")
        ) from e


def stratified_order(labels: Tensor, seed: int) -> Tensor:
    """A seeded permutation of the indices in which every prefix is class-balanced.

    Shuffle, then interleave the classes by each sample's rank within its class, so
    that taking the first k indices for validation gives every class its share.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    by_class = torch.argsort(shuffled, stable=True)
    first_of_class = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(perm)
    rank[by_class] = torch.arange(len(labels)) - first_of_class[shuffled[by_class]]
    position = (rank + 0.5) / counts[shuffled]
    return perm[torch.argsort(position, stable=True)]


def load_split(
    dataset: str, split: str, data_dir: str | Path | None = None, val_size: int = 5000, split_seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(images, labels) of one split ("train", "val" or "test") of a dataset."""
    if dataset == "sample":
        images, labels = read_images_labels(*sample_files())
        order = stratified_order(labels, split_seed)
        n_val, n_test = SAMPLE_SPLIT["val"], SAMPLE_SPLIT["test"]
        idx = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}[split]
        return images[idx], labels[idx]
    if split == "test":
        return read_images_labels(*find_raw_files(dataset, data_dir, "test"))
    images, labels = read_images_labels(*find_raw_files(dataset, data_dir, "train"))
    if not 0 < val_size < len(labels):
        raise DataError(f"data.val_size={val_size} must be between 1 and {len(labels) - 1}")
    order = stratified_order(labels, split_seed)
    idx = order[:val_size] if split == "val" else order[val_size:]
    return images[idx], labels[idx]


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
    of its batches the model has consumed (``mark_consumed``, called by the data module
    for every training batch it hands over -- counting batches handed to the model
    rather than produced keeps Lightning's one-batch prefetch out of the count);
    ``load_state_dict`` makes the next pass over that epoch skip exactly those. The state
    travels in Lightning's checkpoints (see DigitsDataModule.state_dict), and Lightning
    calls ``set_epoch`` (through ``.sampler``, its protocol for samplers) at the start of
    every epoch.
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
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.even_shards = rank, world_size, even_shards
        self.epoch, self.consumed, self._skip = 0, 0, 0
        self.sampler, self.batch_sampler = self, None  # where Lightning looks for set_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed, self._skip = epoch, 0, 0

    def _shard_size(self) -> int:
        n = len(self.labels)
        return n // self.world_size if self.even_shards else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

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
        idx = self.indices()
        start, self._skip = self._skip, 0
        self.consumed = start
        for b in range(start, len(self)):
            batch = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.images[batch], self.labels[batch]

    def mark_consumed(self) -> None:
        self.consumed += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "size": len(self.labels)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.labels) or state["seed"] != self.seed:
            raise DataError(
                f"the checkpoint's data loader state is for {state['size']} samples with seed {state['seed']}, "
                f"this run has {len(self.labels)} samples with seed {self.seed}: resume with the same data and seed"
            )
        self.epoch, self.consumed, self._skip = state["epoch"], state["consumed"], state["consumed"]


# --------------------------------------------------------------------------- augmentation


def random_affine(
    images: Tensor,
    rotation: float = 0.0,
    scale: float = 0.0,
    shift: float = 0.0,
    flip: float = 0.0,
    elastic: float = 0.0,
    elastic_sigma: float = 4.0,
) -> Tensor:
    """Jitter each image (N, 1, H, W) by its own random rotation (± degrees), scaling
    (± fraction), shift (± pixels), with probability ``flip`` a left-right mirror (for
    clothes, not digits), and an elastic distortion of at most ``elastic`` pixels (random
    displacements smoothed by a Gaussian of ``elastic_sigma`` pixels, after Simard et al.
    2003) -- on the images' device, in one grid_sample."""
    n, _, h, w = images.shape
    dev = images.device

    def uniform(*shape):  # in [-1, 1)
        return torch.rand(*shape, device=dev) * 2 - 1

    angle = uniform(n) * math.radians(rotation)
    zoom = 1 + uniform(n) * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    mirror = 1 - 2 * (torch.rand(n, device=dev) < flip).to(cos.dtype)  # -1: read x from the other side
    # affine_grid works in coordinates where the image spans [-1, 1]: a pixel is 2/size.
    tx, ty = uniform(n) * shift * 2 / w, uniform(n) * shift * 2 / h
    theta = torch.stack([torch.stack([cos * mirror, -sin, tx], 1), torch.stack([sin * mirror, cos, ty], 1)], 1)
    grid = _affine_grid(theta, h, w).to(images.dtype)
    if elastic:
        grid = grid + _elastic_field(n, h, w, elastic, elastic_sigma, dev).to(grid.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _affine_grid(theta: Tensor, h: int, w: int) -> Tensor:
    """F.affine_grid(theta, (N, C, h, w), align_corners=False) as one small einsum:
    affine_grid first writes N copies of the base grid, ten times slower on a CPU for 28x28."""
    base = _base_grid(h, w, theta.device)
    return torch.einsum("pk,nck->npc", base, theta.to(base.dtype)).view(len(theta), h, w, 2)


@functools.lru_cache(maxsize=16)
def _base_grid(h: int, w: int, device) -> Tensor:
    """(H*W, 3): every pixel centre as (x, y, 1) in affine_grid's [-1, 1] coordinates."""
    xs = (torch.arange(w, device=device) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device) * 2 + 1) / h - 1
    return torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=device)], -1).view(h * w, 3)


def _elastic_field(n: int, h: int, w: int, alpha: float, sigma: float, device) -> Tensor:
    """Smooth random displacements (N, H, W, 2) in grid units, at most alpha pixels:
    uniform noise smoothed by a Gaussian of sigma pixels, each map scaled to peak at
    alpha. (Measured on the default recipe: a 4x4 or 7x7 lattice of random moves,
    interpolated, is six times cheaper but reads 0.4-1.2% fewer digits.)

    The blur is two small matrix products, ``Bh @ noise @ Bwᵀ``: the same numbers as a
    separable convolution over reflect-padded maps, about ten times faster on a CPU."""
    noise = torch.rand(n * 2, h, w, device=device) * 2 - 1
    field = _blur_matrix(h, sigma, device) @ noise @ _blur_matrix(w, sigma, device).T
    field = field / field.abs().amax((1, 2), keepdim=True).clamp_min(1e-6)  # each map peaks at +-1
    return field.view(n, 2, h, w).permute(0, 2, 3, 1) * alpha * torch.tensor([2 / w, 2 / h], device=device)


@functools.lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float, device) -> Tensor:
    """(size, size) matrix of a 1-D Gaussian blur (radius 2 sigma) with reflect padding:
    row i holds the weights that output pixel i takes from every input pixel."""
    radius = max(1, int(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for d, weight in zip(range(-radius, radius + 1), kernel.tolist()):
            j = i + d
            while not 0 <= j < size:  # reflect at the edges (without repeating the edge pixel)
                j = -j if j < 0 else 2 * (size - 1) - j
            matrix[i, j] += weight
    return matrix.to(device=device, dtype=torch.float32)


def to_pixels(images: Tensor, augment: dict | None = None) -> Tensor:
    """uint8 images (N, H, W) -> floats in [0, 1] of shape (N, 1, H, W), jittered by
    random_affine(**augment) when augmentation is asked for (training only)."""
    pixels = images.unsqueeze(1).float().div_(255)
    return random_affine(pixels, **augment) if augment else pixels


# --------------------------------------------------------------------------- data module


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
        val_size: int = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        augment: dict | None = None,
        loader: str = "tensor",
        seed: int | None = 0,
    ):
        super().__init__()
        if loader not in LOADERS:
            raise ValueError(f"loader={loader!r} is not one of: {', '.join(LOADERS)}")
        self.loader, self.seed = loader, seed
        self._on_device: dict = {}
        self._train_loader = None  # the latest training loader, whose position is checkpointed
        self._train_loader_state: dict | None = None
        if dataset not in DATASETS:
            raise ValueError(f"dataset={dataset!r} is not one of: {', '.join(DATASETS)}")
        if dataset != "sample" and data_dir is None:
            raise ValueError(f"dataset={dataset!r} needs a data_dir")
        self.dataset, self.data_dir, self.download = dataset, data_dir, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.num_workers = val_size, split_seed, num_workers
        unknown = set(augment or {}) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"augment: unknown keys {sorted(unknown)}; known: {', '.join(AUGMENTATIONS)}")
        self.augment = {k: float(v) for k, v in (augment or {}).items() if v}
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
        if shuffle and self.batch_size % world:
            raise DataError(
                f"data.batch_size={self.batch_size} is the global batch: it must divide evenly among the "
                f"{world} processes (trainer.devices x trainer.num_nodes), e.g. data.batch_size={self.batch_size // world * world or world}"
            )
        if shuffle:
            batch_size //= world  # each process takes its share of the global batch
        data = self.splits[split]
        if self.loader == "dataloader":  # Lightning adds a DistributedSampler under DDP
            return DataLoader(
                data, batch_size, shuffle=shuffle, num_workers=self.num_workers, collate_fn=_as_batch,
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
        return DeviceBatches(images, labels, batch_size, shuffle, seed, rank, world, even_shards=shuffle)

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
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if training and isinstance(self._train_loader, DeviceBatches):
            self._train_loader.mark_consumed()
        return to_pixels(images, self.augment if training else None), labels
