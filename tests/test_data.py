"""IDX files, dataset layouts, splits, normalisation statistics and augmentation."""

import gzip
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from handprop import data as D
from handprop.data import augment

from conftest import digits, write_raw_dataset


@pytest.mark.parametrize("name", ["x-ubyte", "x-ubyte.gz"])
def test_idx_roundtrip(tmp_path, name):
    images, _ = digits(7)
    D.write_idx(tmp_path / name, images)
    assert torch.equal(D.read_idx(tmp_path / name), images)


def test_idx_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(D.DataError, match="not an IDX file.*magic number 12340801"):
        D.read_idx(tmp_path / "bad")


def test_idx_truncated(tmp_path):
    images, _ = digits(3)
    D.write_idx(tmp_path / "imgs", images)
    data = (tmp_path / "imgs").read_bytes()
    (tmp_path / "imgs").write_bytes(data[:-100])
    with pytest.raises(D.DataError, match=r"declares shape \[3, 28, 28\].*truncated"):
        D.read_idx(tmp_path / "imgs")


def test_idx_corrupt_gzip(tmp_path):
    blob = gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01" * 5)
    (tmp_path / "labels.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(D.DataError, match="cannot read .*labels.gz"):
        D.read_idx(tmp_path / "labels.gz")


def test_images_and_labels_must_agree(tmp_path):
    images, labels = digits(10)
    D.write_idx(tmp_path / "i", images)
    D.write_idx(tmp_path / "l", labels[:9])
    with pytest.raises(D.DataError, match="10 images but .* 9 labels"):
        D.read_images_labels(tmp_path / "i", tmp_path / "l")


def test_embedded_sample_is_the_documented_one():
    images, labels = D.read_images_labels(*D.sample_files())
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))


def test_sample_split_is_stratified_disjoint_and_fixed():
    splits = {s: D.load_split("sample", s) for s in ("train", "val", "test")}
    assert {s: len(y) for s, (_, y) in splits.items()} == {"train": 4000, "val": 500, "test": 500}
    assert torch.equal(torch.bincount(splits["val"][1]), torch.full((10,), 50))
    assert torch.equal(torch.bincount(splits["test"][1]), torch.full((10,), 50))
    flat = {s: {bytes(img.numpy()) for img in x} for s, (x, _) in splits.items()}
    assert not (flat["train"] & flat["test"]) and not (flat["val"] & flat["test"])
    again = D.load_split("sample", "test")
    assert torch.equal(again[0], splits["test"][0])
    other = D.load_split("sample", "test", split_seed=1)
    assert not torch.equal(other[0], splits["test"][0])


def test_stratified_order_prefixes_are_balanced():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    order = D.stratified_order(labels, seed=5)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.bincount(labels[order[:10]], minlength=3).tolist() == [6, 3, 1]


def test_full_dataset_in_torchvision_layout(tmp_path):
    write_raw_dataset(tmp_path, "MNIST", n_train=200, n_test=50)
    train_x, train_y = D.load_split("mnist", "train", tmp_path, val_size=40)
    val_x, val_y = D.load_split("mnist", "val", tmp_path, val_size=40)
    test_x, _ = D.load_split("mnist", "test", tmp_path)
    assert (len(train_y), len(val_y), len(test_x)) == (160, 40, 50)
    assert torch.equal(torch.bincount(val_y), torch.full((10,), 4))


def test_flat_layout_as_debian_installs_it(tmp_path):
    raw = write_raw_dataset(tmp_path, "FashionMNIST")
    for f in raw.iterdir():
        f.rename(tmp_path / f.name)
    x, y = D.load_split("fashion_mnist", "test", tmp_path)
    assert len(x) == 50


def test_evaluating_needs_only_the_test_files(tmp_path):
    write_raw_dataset(tmp_path, "MNIST", splits=("test",))
    dm = D.DigitsDataModule("mnist", str(tmp_path))
    dm.setup("test")
    assert len(dm.splits["test"]) == 50 and "train" not in dm.splits
    with pytest.raises(D.DataError, match=r"missing train-images-idx3-ubyte\[.gz\] .*data.download=true"):
        D.DigitsDataModule("mnist", str(tmp_path)).setup("fit")


def test_pixel_stats_come_from_the_training_split():
    dm = D.DigitsDataModule("sample")
    dm.setup("fit")
    train_x = dm.splits["train"].images.double() / 255
    assert dm.pixel_stats == pytest.approx((train_x.mean().item(), train_x.std().item()))
    assert 0.12 < dm.pixel_stats[0] < 0.14 and 0.29 < dm.pixel_stats[1] < 0.32  # MNIST's usual values


def test_loader_yields_uint8_batches_and_the_hook_scales_them():
    dm = D.DigitsDataModule("sample", batch_size=64, eval_batch_size=64)
    dm.setup("fit")
    chunk = next(iter(dm.train_dataloader()))  # training: a chunk of mini-batches, one without a model's choice
    assert isinstance(chunk, D.Chunk) and len(chunk) == 1 and chunk.batch_size == 64
    assert chunk.images.shape == (64, 28, 28) and chunk.images.dtype == torch.uint8
    images, labels = next(iter(dm.val_dataloader()))  # evaluation: plain batches
    assert images.shape == (64, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(y, labels)


def test_random_affine_shift_moves_the_digit():
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 12:16, 12:16] = 1
    assert torch.equal(D.random_affine(img), img)  # no jitter asked: unchanged
    torch.manual_seed(0)
    moved = D.random_affine(img.expand(64, 1, 28, 28), shift=3)
    cols = torch.arange(28.0)
    centre_x = (moved.sum(2).squeeze(1) * cols).sum(1) / moved.sum((1, 2, 3))
    assert centre_x.min() < 12.5 and centre_x.max() > 14.5  # shifted both ways
    assert (centre_x - 13.5).abs().max() <= 3.01
    torch.testing.assert_close(moved.sum((1, 2, 3)), torch.full((64,), 16.0), rtol=0.02, atol=0.3)


def _centre(images, axis):
    """Each image's centre of ink along x (axis=-1) or y (axis=-2), in pixels."""
    coords = torch.arange(images.shape[axis], dtype=images.dtype)
    profile = images.sum((1, -2 if axis == -1 else -1))
    return (profile * coords).sum(1) / profile.sum(1)


def test_random_affine_shear_slants_a_vertical_bar_both_ways():
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 4:24, 12:16] = 1
    torch.manual_seed(0)
    sheared = D.random_affine(img.expand(64, 1, 28, 28), shear=0.3)
    slant = _centre(sheared[..., 4:10, :], -1) - _centre(sheared[..., 18:24, :], -1)  # top minus bottom
    assert slant.min() < -2 and slant.max() > 2  # leaning left and right
    assert slant.abs().max() <= 0.3 * 14 + 0.5  # rows 7 and 21 apart: at most 0.3 pixel a row
    torch.testing.assert_close(sheared.sum((1, 2, 3)), img.sum((1, 2, 3)).expand(64), rtol=0.05, atol=0)


def _spread(images, axis):
    """Each image's spread of ink along x (axis=-1) or y (axis=-2): the standard deviation
    of the inked pixels' coordinates (a bar w pixels wide: w / sqrt(12))."""
    profile = images.sum((1, -2 if axis == -1 else -1))
    coords = torch.arange(images.shape[axis], dtype=images.dtype)
    centre = (profile * coords).sum(1, keepdim=True) / profile.sum(1, keepdim=True)
    return ((profile * (coords - centre) ** 2).sum(1) / profile.sum(1)).sqrt()


def test_random_affine_squeeze_trades_width_for_height():
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 10:18, 10:18] = 1
    torch.manual_seed(0)
    squeezed = D.random_affine(img.expand(64, 1, 28, 28), squeeze=0.2)
    wide, tall = _spread(squeezed, -1) / _spread(img, -1), _spread(squeezed, -2) / _spread(img, -2)
    assert (wide > 1.1).any() and (wide < 0.9).any()  # wider and narrower
    assert ((wide > 1 / 1.2 - 0.02) & (wide < 1 / 0.8 + 0.02)).all()  # by at most the squeeze, 1 +- 0.2
    # the height the other way (bilinear sampling blurs both a little)
    torch.testing.assert_close(wide * tall, torch.ones(64), rtol=0.08, atol=0)
    torch.testing.assert_close(squeezed.sum((1, 2, 3)), img.sum((1, 2, 3)).expand(64), rtol=0.1, atol=0)
    assert torch.equal(D.random_affine(img, squeeze=0.0, shear=0.0), img)


def test_affine_thetas_are_rotation_zoom_shear_squeeze_and_mirror_multiplied_in_that_order():
    torch.manual_seed(0)
    draws = torch.rand(64, 7, dtype=torch.float64)
    rotation, scale, shift, squeeze, shear, flip, h, w = 15.0, 0.1, 2.0, 0.2, 0.3, 0.5, 28, 20
    theta = augment.affine_thetas(draws, rotation, scale, shift, squeeze, shear, flip, h, w)
    assert theta.shape == (64, 2, 3)
    for u, t in zip(draws.tolist(), theta):
        r = [2 * x - 1 for x in u[:6]]
        angle, zoom = math.radians(rotation) * r[0], 1 + scale * r[1]
        f64 = {"dtype": torch.float64}
        rotate = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], **f64) / zoom
        slant = torch.tensor([[1.0, shear * r[2]], [0.0, 1.0]], **f64)
        q = 1 + squeeze * r[3]
        squash = torch.diag(torch.tensor([q, 1 / q], **f64))
        mirror = torch.diag(torch.tensor([-1.0 if u[6] < flip else 1.0, 1.0], **f64))
        expected = rotate @ slant @ squash @ mirror
        torch.testing.assert_close(t[:, :2], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(t[:, 2], torch.tensor([shift * r[4] * 2 / w, shift * r[5] * 2 / h], **f64))
    mirrored = theta[:, 0, 0] < 0
    assert mirrored.equal(draws[:, 6] < flip) and 16 < int(mirrored.sum()) < 48


def test_random_affine_flip_mirrors_left_right():
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 10:18, 2:6] = 1  # a bar near the left edge
    flipped = D.random_affine(img, flip=1.0)
    torch.testing.assert_close(flipped, img.flip(-1))
    torch.manual_seed(0)
    half = D.random_affine(img.expand(200, 1, 28, 28), flip=0.5)
    mirrored = (half[:, 0, :, 14:].sum((1, 2)) > half[:, 0, :, :14].sum((1, 2))).float().mean()
    assert 0.35 < mirrored < 0.65


def test_elastic_distortion_is_a_small_smooth_warp():
    torch.manual_seed(0)
    field = augment._elastic_field(8, 28, 28, alpha=2.0, sigma=4.0, device="cpu")
    assert field.shape == (8, 28, 28, 2)
    pixels = field * 14  # grid units -> pixels
    assert pixels.abs().max() <= 2.0 + 1e-5 and pixels.abs().amax((1, 2, 3)).min() > 1.9
    assert (pixels[:, 1:] - pixels[:, :-1]).abs().max() < 0.6  # neighbours move together
    img = torch.zeros(8, 1, 28, 28)
    img[:, 0, 8:20, 12:16] = 1
    warped = D.random_affine(img, elastic=2.0)
    assert not torch.equal(warped, img)
    # (a 4-pixel bar, its sides moved by up to 2 pixels: over seeds its ink changes by up to a quarter)
    torch.testing.assert_close(warped.sum((1, 2, 3)), img.sum((1, 2, 3)), rtol=0.3, atol=0)


@pytest.mark.parametrize("size, sigma", [(28, 4.0), (28, 1.5), (9, 4.0)])
def test_blur_matrix_is_a_gaussian_convolution_over_reflect_padding(size, sigma):
    # the reference: a separable 1-D convolution of reflect-padded maps (radius 2 sigma)
    torch.manual_seed(0)
    noise = torch.rand(6, 1, size, size, dtype=torch.float64)
    radius = max(1, int(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    if radius < size:  # torch's reflect pad needs a pad smaller than the map
        ref = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        ref = F.conv2d(F.pad(ref, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    else:  # a 9-pixel map under a radius-8 kernel reflects more than once: build it by hand
        idx = torch.arange(-radius, size + radius)
        while ((idx < 0) | (idx >= size)).any():
            idx = torch.where(idx < 0, -idx, torch.where(idx >= size, 2 * (size - 1) - idx, idx))
        ref = F.conv2d(noise[..., :, idx], kernel.view(1, 1, 1, -1))
        ref = F.conv2d(ref[..., idx, :], kernel.view(1, 1, -1, 1))
    m = augment._blur_matrix(size, sigma, "cpu").double()
    torch.testing.assert_close(m.sum(1), torch.ones(size, dtype=torch.float64))  # a blur keeps the mean level
    torch.testing.assert_close(m @ noise[:, 0] @ m.T, ref[:, 0], rtol=1e-6, atol=1e-6)


def test_the_sampling_grid_is_affine_grids():
    torch.manual_seed(0)
    for h, w in ((28, 28), (5, 9)):
        theta = torch.randn(7, 2, 3)
        torch.testing.assert_close(
            augment._affine_grid(theta, h, w), F.affine_grid(theta, [7, 1, h, w], align_corners=False)
        )


def test_a_download_without_torchvision_names_the_extra_that_brings_it(tmp_path, monkeypatch):
    """torchvision is the download extra's: without it, the fix, and nothing written."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    with pytest.raises(
        D.DataError,
        match=r"data.download=true fetches mnist with torchvision, which is not installed: "
        r"pip install 'handprop\[download\]'",
    ):
        D.download("mnist", tmp_path / "data")
    assert not (tmp_path / "data").exists()
