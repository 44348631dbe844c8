"""Full MNIST's download path, run for real against a local mirror (no internet here):
files land in torchvision's layout complete and checked, or not at all."""

import functools
import gzip
import hashlib
import http.server
import os
import threading

import pytest
import torch
from torchvision import datasets

from handprop import data as D
from handprop.errors import HandpropError
from handprop.train import train

from conftest import run_cli, write_raw_dataset

NAMES = [f"{stem}.gz" for split in D.FILES.values() for stem in split]


class Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; mode 'drop' declares each file's length and then sends only half of it
    (a connection lost mid-download)."""

    mode = "ok"

    def do_GET(self):
        if self.mode != "drop":
            return super().do_GET()
        body = open(self.translate_path(self.path), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local MNIST mirror of a small dataset in IDX format, and torchvision pointed at it with
    the files' own MD5s (the real ones are full MNIST's)."""
    served = write_raw_dataset(tmp_path / "served", n_train=120, n_test=30)
    handler = type("Handler", (Mirror,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(
        datasets.MNIST, "resources", [(n, hashlib.md5((served / n).read_bytes()).hexdigest()) for n in NAMES]
    )
    yield handler, served
    server.shutdown()
    server.server_close()


def test_a_download_lands_complete_in_torchvisions_layout(mirror, tmp_path):
    _, served = mirror
    data_dir = tmp_path / "data"
    D.download("mnist", data_dir)
    raw = data_dir / "MNIST" / "raw"
    assert sorted(p.name for p in data_dir.iterdir()) == ["MNIST"]  # no temporary folder left behind
    assert set(NAMES) <= {p.name for p in raw.iterdir()}
    for name in NAMES:
        assert (raw / name).read_bytes() == (served / name).read_bytes()
    images, labels = D.load_split("mnist", "test", data_dir)
    assert images.shape == (30, 28, 28) and torch.equal(labels, torch.arange(30) % 10)
    assert len(D.load_split("mnist", "train", data_dir, val_size=20)[1]) == 100


def test_files_already_there_are_not_fetched_again(mirror, tmp_path, monkeypatch):
    write_raw_dataset(tmp_path / "data")
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    D.download("mnist", tmp_path / "data")


@pytest.mark.parametrize("fault", ["drop", "corrupt"])
def test_a_failed_download_leaves_nothing_half_written(mirror, tmp_path, fault):
    handler, served = mirror
    if fault == "drop":
        handler.mode = "drop"
    else:  # the right size, the wrong bytes: torchvision's MD5 check refuses it
        (served / NAMES[0]).write_bytes(bytes(reversed((served / NAMES[0]).read_bytes())))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")  # what was there stays
    with pytest.raises(D.DataError) as error:
        D.download("mnist", data_dir)
    message = str(error.value)
    assert message.startswith(f"could not download mnist into {data_dir}: ")
    assert f"copy them into {data_dir / 'MNIST' / 'raw'}, and run with data.download=false" in message
    assert message.endswith(f"Nothing was written to {data_dir}.")
    assert sorted(p.name for p in data_dir.rglob("*")) == ["notes.txt"]


def test_offline_training_run_says_how_to_get_the_files(tmp_path):
    """The real thing: train.py with data.download=true and no network (every request goes to
    a proxy on a port nothing listens on)."""
    data_dir = tmp_path / "data"
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    proc = run_cli(
        "train.py",
        "data=mnist",
        "data.download=true",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        env=env,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        f"error: could not download mnist into {data_dir}: Error downloading train-images-idx3-ubyte.gz" in proc.stderr
    )
    assert "Offline? Fetch the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz," in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not data_dir.exists()  # made for the download, removed with it
    assert not (tmp_path / "run" / "checkpoints").exists()


def _spoil(raw, how):
    images, labels = raw / NAMES[0], raw / NAMES[1]
    if how == "missing":
        images.unlink()
    elif how == "truncated":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-500]))
    elif how == "wrong magic":
        labels.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + gzip.decompress(labels.read_bytes())[4:]))
    elif how == "label count":
        D.write_idx(labels, D.read_idx(labels)[:-1])


@pytest.mark.parametrize(
    "how,message",
    [
        (
            "missing",
            r"mnist: missing train-images-idx3-ubyte\[.gz\] in .*/MNIST/raw \(data.data_dir=.*\)\. Put the train "
            r"files there, or set data.download=true",
        ),
        (
            "truncated",
            r"train-images-idx3-ubyte.gz: header declares shape \[120, 28, 28\] \(94096 bytes\) but the file "
            r"holds 93596 bytes: it is truncated or corrupt. Replace it with an intact copy.",
        ),
        (
            "wrong magic",
            r"train-labels-idx1-ubyte.gz is not an IDX file of unsigned bytes \(magic number 00000d01, "
            r"expected 0000080N\)",
        ),
        (
            "label count",
            r"train-images-idx3-ubyte.gz holds 120 images but .*train-labels-idx1-ubyte.gz holds 119 labels: "
            r"the two files do not belong together",
        ),
    ],
)
def test_a_bad_data_file_stops_the_run_naming_the_file(train_cfg, tmp_path, how, message):

    raw = write_raw_dataset(tmp_path / "data", n_train=120, n_test=30)
    _spoil(raw, how)
    before = {p: p.read_bytes() for p in raw.iterdir()}
    with pytest.raises(HandpropError, match=message):
        train(train_cfg("data=mnist", f"data.data_dir={tmp_path / 'data'}", "data.val_size=20"))
    assert {p: p.read_bytes() for p in raw.iterdir()} == before  # the user's files are left as they were
    assert not (tmp_path / "checkpoints").exists()
