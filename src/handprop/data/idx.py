"""IDX files, the format MNIST and Fashion-MNIST ship in: read (checked thoroughly) and write."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError

_IDX_DTYPES = {0x08: torch.uint8}  # the only element type the digit datasets use


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


def idx_length(path: str | Path) -> int:
    """The first dimension an IDX file's header declares (its number of images or labels),
    read from the header alone; the file's body is checked when it is read (``read_idx``)."""
    path = Path(path)
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as file:
            head = file.read(8)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}. Replace it with an intact copy.") from e
    if len(head) < 8 or head[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes. Replace it with the original dataset file.")
    return int.from_bytes(head[4:8], "big")


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
