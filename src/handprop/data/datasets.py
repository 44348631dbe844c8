"""Finding, downloading and splitting the datasets: the embedded sample, full MNIST, full
Fashion-MNIST."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError
from .idx import read_images_labels

SAMPLE_SPLIT = {"val": 500, "test": 500}  # the remaining 4,000 sample digits train
RAW_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
DATASETS = ("sample", *RAW_FOLDER)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
    data_dir = Path(data_dir)
    try:
        for split in FILES:
            find_raw_files(dataset, data_dir, split)
        return  # already there
    except DataError:
        pass
    raw = data_dir / RAW_FOLDER[dataset] / "raw"
    if importlib.util.find_spec("torchvision") is None:
        raise DataError(
            f"data.download=true fetches {dataset} with torchvision, which is not installed: "
            f"pip install 'handprop[download]', or put the four files in {raw} and set data.download=false"
        )
    from torchvision import datasets  # noqa: PLC0415 -- torchvision loads only for a download

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
