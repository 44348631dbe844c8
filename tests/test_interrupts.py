"""Nothing lost: real signals to a real training process, and a kill in the middle of a save."""

import itertools
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handprop.errors import HandpropError
from handprop.files import AtomicCheckpointIO, remove_stale_temporaries
from handprop.train import train

from conftest import FAST, compose_config, run_cli, run_printed, signal_when, tensorboard_run

LONG_RUN = [
    "model.hidden=[16]",
    "trainer.max_epochs=300",
    "callbacks.pictures=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_leaves_a_resumable_checkpoint_and_says_how_to_resume(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    # somewhere in a later epoch, with training under way
    returncode, stderr = signal_when(
        run_dir / "checkpoints" / "last.ckpt", *LONG_RUN, f"hydra.run.dir={run_dir}", sig=sig, settle=1.0
    )
    log = run_dir / "train.log"  # (a run that went on to its end says so there, not on stderr)
    assert returncode == code, stderr[-3000:] + (log.read_text()[-3000:] if log.is_file() else "")
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    assert f"checkpoint {interrupted}" in stderr and "Resume with:" in stderr
    assert f"ckpt_path={interrupted} hydra.run.dir={run_dir}" in stderr
    assert "'model.hidden=[16]'" in stderr  # the run's own overrides, quoted for the shell
    ckpt = torch.load(interrupted, map_location="cpu", weights_only=True)
    step = ckpt["global_step"]
    assert step > 0 and (run_dir / "checkpoints" / "last.ckpt").is_file()  # the last epoch's checkpoint kept too
    # the printed command resumes (here for 3 more steps)
    resumed = run_cli(
        "train.py",
        *LONG_RUN,
        f"ckpt_path={interrupted}",
        f"hydra.run.dir={run_dir}",
        f"trainer.max_steps={step + 3}",
        "test=false",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == step + 3
    assert not interrupted.exists()  # the finished run's last.ckpt superseded it


def _save_until_killed(path: str, tmpdir: str, saved) -> None:
    """Checkpoints of 100 MB, one after another, saved as a handprop run's Trainer saves them
    (with $TMPDIR on ``tmpdir``), each save's number sent on ``saved`` once it is complete."""
    os.environ["TMPDIR"], tempfile.tempdir = tmpdir, None
    big = torch.arange(25_000_000, dtype=torch.float32)  # a save takes a while
    for i in itertools.count(1):
        AtomicCheckpointIO().save_checkpoint({"version": i, "weights": big + i}, path)
        saved.send(i)


@pytest.mark.slow
def test_a_checkpoint_killed_while_saving_is_the_old_one_or_the_new_one(tmp_path):
    """With $TMPDIR on another file system (a tmpfs, as /tmp often is): Lightning's own
    save wrote there and then copied the file into place, and a kill during the copy left
    a truncated or empty checkpoint. The temporary file now lies beside its target.

    Each saver is a process of its own, forked from a server that has imported handprop
    once, and is killed at a point of a later save, once its first save is complete."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    tmpdir = Path(tempfile.mkdtemp(dir="/dev/shm"))  # a tmpfs, not tmp_path's file system
    processes = multiprocessing.get_context("forkserver")
    processes.set_forkserver_preload(["handprop.files"])
    interrupted = 0
    try:
        for delay in (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05, 1.2):  # across a whole save (~0.3-1 s)
            receive, send = processes.Pipe(duplex=False)
            saver = processes.Process(target=_save_until_killed, args=(str(path), str(tmpdir), send))
            saver.start()
            try:
                assert receive.poll(120) and receive.recv() == 1  # one complete save first
                time.sleep(delay)  # then kill it somewhere in a later save
                os.kill(saver.pid, signal.SIGKILL)
                saver.join(60)
            finally:
                saver.kill()
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # complete, never truncated
            version = ckpt["version"]
            assert torch.equal(ckpt["weights"][:3], torch.tensor([0.0, 1, 2]) + version)
            assert ckpt["weights"].numel() == 25_000_000
            assert not list(tmpdir.iterdir())  # nothing in $TMPDIR
            interrupted += len(remove_stale_temporaries(path.parent))  # what a resumed run does first
            assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    finally:
        shutil.rmtree(tmpdir)
    assert interrupted >= 2  # (kills that fell inside a save, which left its temporary file)


@pytest.mark.slow
def test_ctrl_c_during_the_final_test_keeps_the_training_and_says_how_to_test(tmp_path):
    """The test of the best checkpoint is not training: no interrupt checkpoint (it would
    hold the best epoch's weights under the last epoch's step), metrics.json with what
    training measured, and the eval.py command that runs the test again."""
    run_dir, marker = tmp_path / "run", tmp_path / "testing"
    sleepy = [
        "+callbacks.sleep._target_=conftest.SleepAt",
        "+callbacks.sleep.stage=test",
        f"+callbacks.sleep.marker={marker}",
    ]
    quick = [
        "model.hidden=[16]",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "callbacks.pictures=null",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
    ]
    returncode, stderr = signal_when(marker, *quick, *sleepy, f"hydra.run.dir={run_dir}")
    assert returncode == 130, stderr[-3000:]
    assert "SIGINT: the final test was interrupted; training had finished (2 epochs, step 4)" in stderr
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        "val/acc" in metrics and metrics["trainer/global_step"] == 4 and not any(k.startswith("test/") for k in metrics)
    )
    command = stderr.split("Test the best checkpoint with:\n", 1)[1].strip().splitlines()[0]
    assert command.startswith("python eval.py ckpt_path=") and "data=sample" in command
    evaluated = run_printed(command, f"hydra.run.dir={tmp_path}/eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test/acc" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_a_resumed_run_continues_its_tensorboard_run(tmp_path):
    """Resuming into the same run directory with the same overrides writes to the same
    TensorBoard run: the run's name leaves ckpt_path out."""

    common = [*FAST, "model.hidden=[16]", "test=false", "scheduler=none"]
    train(compose_config("train", [*common, "trainer.max_epochs=1"], tmp_path))
    first = tensorboard_run(tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    train(
        compose_config(
            "train", [*common, "trainer.max_epochs=1", f"ckpt_path={last}", "trainer.max_epochs=2"], tmp_path
        )
    )
    assert tensorboard_run(tmp_path) == first  # one TensorBoard run, both parts in it
    events = EventAccumulator(str(first))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [3, 7]  # epoch 1, then epoch 2 after the resume


def test_a_new_run_never_overwrites_or_silently_continues_another_runs_checkpoints(tmp_path):
    """A second `python train.py hydra.run.dir=<the same dir>` without ckpt_path is refused
    before any work (Lightning, given an OnExceptionCheckpoint, would instead have resumed the
    old run from its newest checkpoint), and the old run's files are left as they were."""

    common = [*FAST, "model.hidden=[16]", "test=false"]
    train(compose_config("train", common, tmp_path))
    before = {p: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(HandpropError) as error:
        train(compose_config("train", [*common, "model.hidden=[32]"], tmp_path))
    assert str(error.value).startswith(f"{tmp_path / 'checkpoints'} already holds checkpoints of another run (")
    assert f"Resume that run with ckpt_path={last} (and the same hydra.run.dir)" in str(error.value)
    # a checkpoint from elsewhere does not make this directory's checkpoints safe to overwrite
    elsewhere = tmp_path / "other.ckpt"
    elsewhere.write_bytes(last.read_bytes())
    with pytest.raises(HandpropError, match="already holds checkpoints"):
        train(
            compose_config(
                "train", [*common, f"ckpt_path={elsewhere}", "trainer.max_epochs=3", "scheduler=none"], tmp_path
            )
        )
    assert {p: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before


# a short run whose validation has 5 batches
VALIDATED = [
    "model.hidden=[16]",
    "trainer.limit_train_batches=2",
    "callbacks.pictures=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "data.eval_batch_size=100",
]


def _ctrl_c_in_validation(tmp_path, *args: str) -> tuple[int, str]:
    """``python train.py ARGS`` with a Ctrl-C between the first validation's batches 2 and 3
    (after the sanity check): its exit status and stderr."""
    marker = tmp_path / "validating"
    sleepy = [
        "+callbacks.sleep._target_=conftest.SleepAt",
        "+callbacks.sleep.stage=validation",
        f"+callbacks.sleep.marker={marker}",
        "+callbacks.sleep.batch=2",
        "+callbacks.sleep.seconds=3",  # (the Ctrl-C lets it sleep on)
    ]
    return signal_when(marker, *args, *sleepy)


def _val_acc(run_dir):

    (events,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars("val/acc")]


@pytest.mark.slow
def test_ctrl_c_during_validation_lets_it_finish_and_the_resume_goes_on_from_there(tmp_path):
    """A Ctrl-C between two validation batches takes effect when the validation is over:
    its val/acc and the best-checkpoint decision are the epoch's, and the resumed run ends
    with every epoch validated once, as the run that was never interrupted."""
    quick = [*VALIDATED, "trainer.max_epochs=3", "scheduler=none", "test=false"]
    run_dir = tmp_path / "run"
    returncode, stderr = _ctrl_c_in_validation(tmp_path, *quick, f"hydra.run.dir={run_dir}")
    assert returncode == 130, stderr[-3000:]
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    resumed = run_cli("train.py", *quick, f"hydra.run.dir={run_dir}", f"ckpt_path={interrupted}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train(compose_config("train", quick, tmp_path / "straight"))  # the run never interrupted (in this process)
    assert _val_acc(run_dir) == _val_acc(tmp_path / "straight")  # every epoch validated, the same numbers
    best = [p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")]
    assert best == [p.name for p in (tmp_path / "straight" / "checkpoints").glob("epoch*.ckpt")]


@pytest.mark.slow
def test_ctrl_c_during_the_last_validation_stops_the_final_test(tmp_path):
    """Training is over when the last epoch's validation ends: the held Ctrl-C stops the final
    test as it starts, with the message that says how to run it."""
    run_dir = tmp_path / "run"
    returncode, stderr = _ctrl_c_in_validation(tmp_path, *VALIDATED, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert returncode == 130, stderr[-3000:]
    assert "SIGINT: the final test was interrupted; training had finished (1 epochs, step 2)" in stderr
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    assert [p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")]  # the epoch's best, kept
