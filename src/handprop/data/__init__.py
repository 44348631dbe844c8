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

from ..errors import DataError
from .augment import AUGMENTATIONS, random_affine, seeded_digits, to_pixels
from .datamodule import DigitsDataModule, per_process_batch
from .datasets import (
    DATASETS,
    FILES,
    RAW_FOLDER,
    SAMPLE_SPLIT,
    download,
    find_raw_files,
    load_split,
    sample_files,
    stratified_order,
)
from .idx import read_idx, read_images_labels, write_idx
from .loader import LOADERS, Chunk, DeviceBatches, TensorBatches

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "FILES",
    "LOADERS",
    "per_process_batch",
    "RAW_FOLDER",
    "SAMPLE_SPLIT",
    "Chunk",
    "DataError",
    "DeviceBatches",
    "DigitsDataModule",
    "TensorBatches",
    "download",
    "find_raw_files",
    "load_split",
    "random_affine",
    "read_idx",
    "read_images_labels",
    "sample_files",
    "stratified_order",
    "seeded_digits",
    "to_pixels",
    "write_idx",
]
