"""Checkpoints load safely: no code runs from a file, and a wrong one is named as such."""

import pickle
import subprocess
import sys

import pytest
import torch

from conftest import FAST, ROOT

from handprop.train import UserError, read_checkpoint, train


class _Payload:
    """Unpickling this calls Path.touch(marker): code run by merely loading the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import compose_config

    out = tmp_path_factory.mktemp("run")
    train(compose_config("train", [*FAST, "model.hidden=[16]", "callbacks.pictures=null", "test=false"], out))
    return out / "checkpoints" / "last.ckpt"


def _malicious(checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    return bad, marker


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(checkpoint, tmp_path):
    bad, marker = _malicious(checkpoint, tmp_path)
    with pytest.raises(UserError, match="refused to load: the file holds Python objects other than tensors"):
        read_checkpoint(str(bad))
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # the proof that the payload is real: unsafe loading runs it
    assert marker.exists()


@pytest.mark.parametrize("script", ["eval.py", "train.py"])
def test_the_cli_refuses_it_too(checkpoint, tmp_path, script):
    bad, marker = _malicious(checkpoint, tmp_path)
    extra = [*FAST, "model.hidden=[16]"] if script == "train.py" else []
    proc = subprocess.run([sys.executable, script, f"ckpt_path={bad}", *extra, f"hydra.run.dir={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refused to load" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_checkpoint_of_another_network_names_the_shapes(checkpoint, tmp_path):
    from conftest import compose_config

    cfg = compose_config("train", [*FAST, "model.hidden=[32]", f"ckpt_path={checkpoint}"], tmp_path)
    with pytest.raises(UserError) as e:
        train(cfg)
    message = str(e.value)
    assert "holds a different network than this run's model config" in message
    assert "net.layers.0.weight: checkpoint (16, 784), this run (32, 784)" in message
    assert "model.hidden=[16]" in message  # the fix
    assert not (tmp_path / "checkpoints").exists()  # nothing written


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", r"\(cannot be read: the file is empty\)"),
        (b"not a checkpoint at all", r"\(cannot be read: not a file torch.save writes: Unsupported operand 110\)"),
        (pickle.dumps({"a": 1}), r"\(cannot be read: not a file torch.save writes: Unsupported operand 149\)"),
        ({"a": 1}, r"\(no state_dict and hyper_parameters\)"),  # torch.save'd, not ours
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, reason):
    path = tmp_path / "x.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=f"ckpt_path={path} is not a handprop checkpoint {reason}$"):
        read_checkpoint(str(path))


def test_a_truncated_checkpoint_is_named(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is not a handprop checkpoint \\(cannot be read"):
        read_checkpoint(str(cut))
