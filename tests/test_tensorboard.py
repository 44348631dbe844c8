"""What a run shows in TensorBoard: read back with TensorBoard's own reader and server."""

import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from handprop.train import train

from conftest import DRAWN, FAST, compose_config, tensorboard_run

PICTURES = ["first_layer_weights", "confusion_matrix", "mistakes", "backprop", "descent"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short run with every picture drawn every epoch (2 epochs x 4 batches)."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config(
        "train",
        [
            *DRAWN,
            "model.hidden=[32,16]",
            "callbacks.training_scalars.every_n_steps=1",
            "callbacks.pictures.every_n_epochs=1",
            "callbacks.pictures.histograms_every_n_epochs=1",
            "callbacks.pictures.descent_points=5",
            "callbacks.pictures.descent_samples=64",
        ],
        out,
    )
    metrics = train(cfg)
    events = EventAccumulator(str(tensorboard_run(out)), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    return out, cfg, metrics, events


def test_every_scalar_is_logged(run):
    _, _, metrics, events = run
    layers = [f"layer{i}" for i in (1, 2, 3)]
    expected = {
        "train/loss_step",
        "train/loss_epoch",
        "train/acc",
        "train/lr",
        "val/loss",
        "val/acc",
        "val/acc_best",
        "wall/epoch_s",
        "wall/samples_per_s",
        *(f"weights/grad_norm/{layer}" for layer in layers),
        *(f"weights/update_ratio/{layer}" for layer in layers),
    }
    tags = set(events.Tags()["scalars"])
    assert expected <= tags, expected - tags
    # logged on every step here (log_every_n_steps=1): 8 optimiser steps, steps 0..7
    assert [e.step for e in events.Scalars("weights/grad_norm/layer1")] == list(range(8))
    assert [e.step for e in events.Scalars("weights/update_ratio/layer1")] == list(range(8))
    ratios = [e.value for e in events.Scalars("weights/update_ratio/layer3")]
    assert all(0 < r < 1 for r in ratios)  # weights move, by a fraction of their size
    speed = [e.value for e in events.Scalars("wall/samples_per_s")]
    epochs = [e.value for e in events.Scalars("wall/epoch_s")]
    assert len(speed) == 2 == len(epochs) and all(v > 0 for v in speed + epochs)
    assert all(256 / s < e for s, e in zip(speed, epochs))  # 4 batches of 64 train in less than the whole epoch


def test_histograms_and_pictures_are_logged(run):
    out, _, _, events = run
    tags = events.Tags()
    for i in (1, 2, 3):
        for kind in ("weight", "bias", "weight_grad", "bias_grad"):
            assert f"weights/layer{i}/{kind}" in tags["histograms"], (i, kind)
            assert len(events.Histograms(f"weights/layer{i}/{kind}")) == 2  # every epoch here
    assert not [tag for tag in tags["histograms"] if not tag.startswith("weights/")]
    for name in PICTURES:
        assert f"visuals/{name}" in tags["images"], name
        image = events.Images(f"visuals/{name}")[-1]
        assert image.width > 100 and image.height > 100
        assert image.encoded_image_string[:4] == b"\x89PNG"
        # drawn and encoded once: the file is TensorBoard's latest picture, byte for byte
        assert (out / "pictures" / f"{name}.png").read_bytes() == image.encoded_image_string
        with Image.open(io.BytesIO(image.encoded_image_string)) as decoded:
            assert decoded.size == (image.width, image.height) and decoded.mode == "RGB"
    assert sorted(tags["images"]) == sorted(f"visuals/{name}" for name in PICTURES)  # after train/ and val/
    assert len(events.Images("visuals/confusion_matrix")) == 2  # after each epoch's validation
    assert len(events.Images("visuals/descent")) == 1  # when training ends
    assert [e.step for e in events.Images("visuals/backprop")] == [0, 8]  # untrained, and trained


def test_the_custom_scalars_layout_names_every_chart_s_tags(run):
    """The Custom Scalars tab: every chart's tag patterns match curves the run wrote."""
    _, _, _, events = run
    (layout,) = [
        layout_pb2.Layout.FromString(events.Tensors(tag)[0].tensor_proto.string_val[0])
        for tag in events.Tags()["tensors"]
        if tag == "custom_scalars__config__"
    ]
    tags = events.Tags()["scalars"]
    assert [c.title for c in layout.category] == ["learning", "gradients", "speed"]
    for category in layout.category:
        for chart in category.chart:
            for pattern in chart.multiline.tag:
                assert any(re.search(pattern, t) for t in tags), (chart.title, pattern)
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts["accuracy: training and validation"] == ["^train/acc$", "^val/acc$"]


def test_pictures_are_off_with_the_callback(tmp_path):

    cfg = compose_config("train", [*FAST, "model.hidden=[8]", "callbacks.training_scalars=null"], tmp_path)
    train(cfg)
    events = EventAccumulator(str(tensorboard_run(tmp_path)))
    events.Reload()
    assert events.Tags()["images"] == [] and events.Tags()["histograms"] == []
    assert not (tmp_path / "pictures").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_the_tensorboard_server_serves_the_run(run):
    """The real `tensorboard` on a loopback port, asked through its HTTP API."""
    out = run[0]
    name = tensorboard_run(out).relative_to(out).as_posix()  # <the run's overrides>
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(out), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        runs, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and not runs:  # the server starts, then loads the event files
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited: {server.stderr.read().decode()[-2000:]}")
            try:
                runs = _get(f"{base}/runs")
            except OSError:
                pass
            time.sleep(0.5)
        assert runs == [name], runs
        scalars = _get(f"{base}/plugin/scalars/tags")[name]
        assert {"val/acc", "train/loss_step", "weights/grad_norm/layer1"} <= set(scalars)
        images = _get(f"{base}/plugin/images/tags")[name]
        assert {f"visuals/{name}" for name in PICTURES} <= set(images)
        query = urllib.parse.urlencode({"run": name, "tag": "val/acc"})
        points = _get(f"{base}/plugin/scalars/scalars?{query}")
        assert len(points) == 2 and all(0 <= p[2] <= 1 for p in points)  # [wall time, step, value] per epoch
        # the loss curves carry the cost's description with their first point, and are served whole
        query = urllib.parse.urlencode({"run": name, "tag": "train/loss_epoch"})
        losses = _get(f"{base}/plugin/scalars/scalars?{query}")
        assert [p[1] for p in losses] == [3, 7] and all(p[2] > 0 for p in losses)
        description = _get(f"{base}/plugin/scalars/tags")[name]["train/loss_epoch"]["description"]
        assert "cross-entropy" in description and "0.500" in description
    finally:
        server.terminate()
        server.wait(timeout=30)
