"""Augmentation on the training device: random affine jitter and elastic distortion."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

# random_affine's
AUGMENTATIONS = ("rotation", "scale", "shift", "squeeze", "shear", "flip", "elastic", "elastic_sigma")


def random_affine(
    images: Tensor,
    rotation: float = 0.0,
    scale: float = 0.0,
    shift: float = 0.0,
    squeeze: float = 0.0,
    shear: float = 0.0,
    flip: float = 0.0,
    elastic: float = 0.0,
    elastic_sigma: float = 4.0,
) -> Tensor:
    """Jitter each image (N, 1, H, W) by its own random rotation (± degrees), scaling
    (± fraction), shift (± pixels), squeeze (± fraction: the width times 1 + s, the height
    divided by it) and horizontal shear (± the shift of a row per row), with probability
    ``flip`` a left-right mirror (for clothes, not digits), and an elastic distortion of
    at most ``elastic`` pixels (random displacements smoothed by a Gaussian of
    ``elastic_sigma`` pixels, after Simard et al. 2003) -- on the images' device, in one
    grid_sample. Squeeze and shear are LeCun et al. 1998's (section III.C.2)."""
    n, _, h, w = images.shape
    # every digit's seven amounts in one draw (a batch of one digit pays for each small op)
    theta = affine_thetas(torch.rand(n, 7, device=images.device), rotation, scale, shift, squeeze, shear, flip, h, w)
    grid = _affine_grid(theta, h, w).to(images.dtype)
    if elastic:
        grid = grid + _elastic_field(n, h, w, elastic, elastic_sigma, images.device).to(grid.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_thetas(
    draws: Tensor,
    rotation: float,
    scale: float,
    shift: float,
    squeeze: float,
    shear: float,
    flip: float,
    h: int,
    w: int,
) -> Tensor:
    """(N, 2, 3) matrices for F.grid_sample's grid from uniform ``draws`` (N, 7) in [0, 1):
    each maps an output pixel to where it reads the input, in coordinates where the image
    spans [-1, 1] (a pixel is 2/size). Column by column, the draws are the rotation angle,
    the zoom, the shear k, the squeeze q and the shifts in x and y (each uniform within
    ± its amount) and whether to mirror (probability ``flip``). The 2x2 part is
    rotation/zoom, then shear [[1, k], [0, 1]], then squeeze [[q, 0], [0, 1/q]], then the
    mirror (x read from the other side), multiplied out:

        [[c·q·m, (c·k - s)/q],      c, s = cos(angle)/zoom, sin(angle)/zoom
         [s·q·m, (s·k + c)/q]]      m = -1 when mirrored, else 1
    """
    setting = (math.radians(rotation), scale, shear, squeeze, shift * 2 / w, shift * 2 / h)
    amounts = _constant(setting, draws.dtype, draws.device)
    angle, zoom, k, q, tx, ty = torch.addcmul(-amounts, draws[:, :6], amounts, value=2).unbind(1)  # (2u - 1)·amount
    zoom, q = zoom + 1, q + 1
    c, s = angle.cos() / zoom, angle.sin() / zoom
    qm = torch.where(draws[:, 6] < flip, -q, q)
    return torch.stack([c * qm, (c * k - s) / q, tx, s * qm, (s * k + c) / q, ty], 1).view(-1, 2, 3)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a tensor, made once per setting: a tensor built from Python numbers
    every step would be a copy from the host that a GPU waits for, inside the training step."""
    return torch.tensor(values, dtype=dtype, device=device)


def _affine_grid(theta: Tensor, h: int, w: int) -> Tensor:
    """F.affine_grid(theta, (N, C, h, w), align_corners=False) as one small matrix product
    with one cached base grid, where affine_grid writes N copies of it first."""
    base = _base_grid(h, w, theta.device)
    return (base @ theta.to(base.dtype).mT).view(len(theta), h, w, 2)


@functools.lru_cache(maxsize=16)
def _base_grid(h: int, w: int, device) -> Tensor:
    """(H*W, 3): every pixel centre as (x, y, 1) in affine_grid's [-1, 1] coordinates."""
    xs = (torch.arange(w, device=device) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device) * 2 + 1) / h - 1
    return torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=device)], -1).view(h * w, 3)


def _elastic_field(n: int, h: int, w: int, alpha: float, sigma: float, device) -> Tensor:
    """Smooth random displacements (N, H, W, 2) in grid units, at most alpha pixels:
    uniform noise smoothed by a Gaussian of sigma pixels, each map scaled to peak at
    alpha. The field is smoothed at full resolution, not interpolated from a coarse
    lattice of random moves: that is cheaper, but the networks it trains read fewer digits.

    The blur is two small matrix products, ``Bh @ noise @ Bwᵀ``: the same numbers as a
    separable convolution over reflect-padded maps, and cheaper than one on a CPU for maps
    this small."""
    noise = torch.rand(n * 2, h, w, device=device) * 2 - 1
    field = _blur_matrix(h, sigma, device) @ noise @ _blur_matrix(w, sigma, device).T
    field = field / field.abs().amax((1, 2), keepdim=True).clamp_min(1e-6)  # each map peaks at +-1
    return field.view(n, 2, h, w).permute(0, 2, 3, 1) * _constant((alpha * 2 / w, alpha * 2 / h), field.dtype, device)


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


def seeded_digits(images: Tensor, labels: Tensor, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` of these uint8 digits drawn by ``seed`` (the same ones every time), as pixels
    in [0, 1] without augmentation, and their labels."""
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return to_pixels(images[pick]), labels[pick]
