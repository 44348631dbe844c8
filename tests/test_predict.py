"""predict.py: a user's own images, any size and polarity, read like MNIST digits."""

import os
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from handprop.data import load_split
from handprop.explain import main as explain_main
from handprop.explain import run_batch
from handprop.module import DigitClassifier
from handprop.predict import ImageError, load_image, predict, to_mnist
from handprop.predict import main as predict_main
from handprop.train import train

from conftest import FAST, compose_config, run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    overrides = [
        *FAST,
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=3",
        "model.hidden=[64]",
        "test=false",
    ]
    train(compose_config("train", overrides, out))
    return out / "checkpoints" / "last.ckpt"


def _here(main, capsys, *args) -> SimpleNamespace:
    """A command's ``main(argv)`` run in this process, as ``subprocess.run`` reports it
    (returncode, stdout, stderr): the checks of what it reads and says, without a Python
    of its own to start. The commands themselves run as subprocesses once each, below."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusal
        status = e.code
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=status, stdout=out, stderr=err)


def _save(pixels: torch.Tensor, path, size=None):
    image = Image.fromarray((pixels.clamp(0, 1) * 255).round().byte().numpy(), mode="L")
    if size is not None:
        image = image.resize(size, Image.BILINEAR)
    image.save(path)
    return path


def test_to_mnist_centres_and_scales_a_digit_like_mnist():
    big = torch.zeros(300, 200)
    big[50:250, 90:110] = 1.0  # a tall bar, "1", off-centre
    digit = to_mnist(big)
    assert digit.shape == (1, 28, 28) and digit.max() == pytest.approx(1.0, abs=0.05)
    rows = (digit[0] > 0.2).any(1).nonzero()
    assert rows.max() - rows.min() + 1 == 20  # the longer side is 20 pixels
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = digit[0].sum()
    assert abs((digit[0] * ys).sum() / mass - 13.5) <= 1 and abs((digit[0] * xs).sum() / mass - 13.5) <= 1
    torch.testing.assert_close(to_mnist(1 - big), digit)  # dark on light reads the same
    with pytest.raises(ImageError, match="blank"):
        to_mnist(torch.full((40, 40), 0.7))


def test_predict_reads_real_digits_drawn_every_way(checkpoint, tmp_path):
    images, labels = load_split("sample", "test")
    paths, expected = [], []
    for k in range(12):
        pixels = images[k].float() / 255
        paths.append(_save(pixels, tmp_path / f"plain{k}.png"))  # as in MNIST: light on dark, 28x28
        paths.append(_save(1 - pixels, tmp_path / f"paper{k}.jpg", size=(210, 180)))  # dark on light, large, JPEG
        expected += [int(labels[k])] * 2
    proc = run_cli("predict.py", str(checkpoint), *map(str, paths))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(paths)
    read = [int(line.split(": ")[1].split()[0]) for line in lines]
    for line in lines:  # ten probabilities that sum to one
        probabilities = [float(part.split(":")[1]) for part in line.split()[-10:]]
        assert sum(probabilities) == pytest.approx(1.0, abs=6e-3)  # printed to 3 decimals
    right = sum(r == e for r, e in zip(read, expected))
    assert right >= 0.75 * len(paths), list(zip(read, expected))
    agree = sum(read[i] == read[i + 1] for i in range(0, len(read), 2))
    assert agree >= 9  # the same digit, drawn the other way round and 7x larger, reads (nearly always) the same


def test_unreadable_files_are_named_and_the_rest_still_read(checkpoint, tmp_path, capsys):
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    good = _save(load_split("sample", "test")[0][0].float() / 255, tmp_path / "good.png")
    proc = _here(predict_main, capsys, checkpoint, junk, tmp_path / "missing.png", good)
    assert proc.returncode == 2
    assert f"{junk}: cannot be read as an image (PNG or JPEG expected)" in proc.stderr
    assert f"{tmp_path / 'missing.png'}: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"{good}: ")


def test_a_missing_checkpoint_is_named(tmp_path, capsys):
    proc = _here(predict_main, capsys, tmp_path / "none.ckpt", "x.png")
    assert proc.returncode == 2 and "none.ckpt: no such checkpoint file" in proc.stderr


def _png_header(path, width: int, height: int):
    """A PNG that declares width x height grey pixels and holds none: what an image reader
    sees first (a decompression bomb of a few bytes when the size is huge)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_images_as_phones_editors_and_the_web_save_them(checkpoint, tmp_path, capsys):
    """Each read the way an image viewer shows it, the work bounded, every file answered."""

    model = DigitClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    images, labels = load_split("sample", "test")
    # a digit the network reads upright but not on its side: the orientation tag matters
    k = next(
        i
        for i in range(len(labels))
        if (
            lambda up: (
                int(predict(model, to_mnist(up)[None])[0].argmax()) == labels[i]
                and int(predict(model, to_mnist(up.rot90(1))[None])[0].argmax()) != labels[i]
            )
        )(1 - images[i].float() / 255)
    )
    upright = Image.fromarray(255 - images[k].numpy(), mode="L").resize((140, 140), Image.BILINEAR)
    label = int(labels[k])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone held sideways writes
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "phone.jpg", exif=exif)
    assert ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg")).size == upright.size
    ink = 255 - np.asarray(upright)  # 16-bit grey, dark on light at the full 0-65535 range
    scan = Image.fromarray(65535 - ink.astype(np.uint16) * 257).resize((1400, 1400), Image.Resampling.BILINEAR)
    scan.save(tmp_path / "scan16.png")  # a scanner's resolution: reduced before reading
    assert Image.open(tmp_path / "scan16.png").mode.startswith("I")
    rgba = np.zeros((140, 140, 4), np.uint8)
    rgba[..., 3] = ink  # black strokes, drawn as opacity on a transparent canvas
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "web.png")
    _png_header(tmp_path / "bomb.png", 20000, 20000)
    _png_header(tmp_path / "wide.png", 13000, 5000)
    os.mkfifo(tmp_path / "pipe.png")
    files = ["bomb.png", "pipe.png", "wide.png", "phone.jpg", "scan16.png", "web.png"]
    proc = _here(predict_main, capsys, checkpoint, *(tmp_path / f for f in files))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = proc.stderr.strip().splitlines()
    assert errors[0] == (
        f"error: {tmp_path / 'bomb.png'}: 20000x20000 pixels is too large to read (at most "
        "50 megapixels); scale it down first"
    )
    assert (
        errors[1] == f"error: {tmp_path / 'pipe.png'}: not a regular file (a directory, a pipe or a device); "
        "give a PNG or JPEG file"
    )
    assert errors[2] == (
        f"error: {tmp_path / 'wide.png'}: 13000x5000 pixels is too large to read (at most 50 megapixels); "
        "scale it down first"
    )
    read = {line.split(": ")[0]: int(line.split(": ")[1].split()[0]) for line in proc.stdout.strip().splitlines()}
    assert read == {str(tmp_path / f): label for f in ("phone.jpg", "scan16.png", "web.png")}
    assert load_image(tmp_path / "phone.jpg").shape == (140, 140)  # upright, as shown


def test_a_checkpoint_with_nan_weights_reads_no_digits(checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"]["net.layers.1.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    good = _save(load_split("sample", "test")[0][0].float() / 255, tmp_path / "good.png")
    proc = _here(predict_main, capsys, tmp_path / "nan.ckpt", good)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "holds weights that are NaN or infinite (net.layers.1.bias)" in proc.stderr


def test_explain_draws_the_backward_pass_of_a_users_digit(checkpoint, tmp_path, capsys):
    images, labels = load_split("sample", "test")
    digit = _save(1 - images[0].float() / 255, tmp_path / "mine.jpg", size=(140, 140))  # dark on light, large
    proc = run_cli("explain.py", str(checkpoint), str(digit), "--label", str(int(labels[0])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    picture = tmp_path / "mine_backprop.png"
    assert f"the backward pass for label {int(labels[0])} drawn in {picture}" in proc.stdout
    with Image.open(picture) as drawn:
        assert drawn.format == "PNG" and drawn.width > 500 and drawn.height > 500
    out = tmp_path / "elsewhere.png"
    here = _here(explain_main, capsys, checkpoint, digit, "--out", out)  # no label: the digit read
    assert here.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert "read as" in here.stdout


def test_explain_names_bad_input_like_predict(checkpoint, tmp_path, capsys):
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    proc = _here(explain_main, capsys, checkpoint, junk)
    assert proc.returncode == 2 and f"{junk}: cannot be read as an image (PNG or JPEG expected)" in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    here = _here(explain_main, capsys, checkpoint, tmp_path / "missing.png")
    assert here.returncode == 2 and f"{tmp_path / 'missing.png'}: no such file" in here.stderr
    here = _here(explain_main, capsys, tmp_path / "none.ckpt", junk)
    assert here.returncode == 2 and "none.ckpt: no such checkpoint file" in here.stderr and here.stdout == ""
    here = _here(explain_main, capsys, checkpoint, junk, "--label", "12")
    assert here.returncode == 2 and "invalid choice: 12" in here.stderr
    assert not list(tmp_path.glob("*_backprop.png"))  # nothing written for bad input


def test_the_lessons_sigmoid_outputs_read_the_same_in_predict_and_explain(tmp_path, capsys):
    """For the lesson's network (sigmoid outputs, the quadratic cost) predict.py prints each
    output neuron's own activation, as explain.py and the Backprop tab show it -- not
    rescaled to sum to 1; and explain.py's mini-batch is the run's: its size, with the
    learner's digit in it."""
    from handprop.checkpoint import model_from_checkpoint, read_checkpoint  # noqa: PLC0415
    from handprop.functional import COSTS  # noqa: PLC0415
    from handprop.predict import main  # noqa: PLC0415

    from board_runs import LESSON, make_run  # noqa: PLC0415

    snapshot = make_run(tmp_path / "run", LESSON, epochs=1) / "backprop" / "epoch0001.pt"
    images, _ = load_split("sample", "test")
    digit = _save(1 - images[3].float() / 255, tmp_path / "mine.png", size=(112, 112))
    assert main([str(snapshot), str(digit)]) == 0
    printed = capsys.readouterr().out
    model = model_from_checkpoint(read_checkpoint(snapshot))
    with torch.no_grad():
        raw = COSTS["quadratic"].read(model.eval()(to_mnist(load_image(digit))[None]))[0]
    read = int(raw.argmax())
    assert f"{digit}: {read} (output {raw[read]:.3f})" in printed and abs(float(raw.sum()) - 1) > 1e-3
    assert printed.split()[-10:] == [f"{k}:{v:.3f}" for k, v in enumerate(raw.tolist())]
    pixels, labels = run_batch(snapshot)
    kept = torch.load(snapshot.parent / "digits.pt", weights_only=True)
    assert len(labels) == 10 and torch.equal(labels, kept["batch_labels"])
    assert explain_main([str(snapshot), str(digit), "--label", "5"]) == 0
    assert "the backward pass for label 5 drawn in" in capsys.readouterr().out
