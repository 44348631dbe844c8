"""Many processes on one CPU: DDP over gloo from the CLI, torchrun as two nodes, sweeps.

Each run trains the default recipe's data path with a small network for 2 epochs (64
optimiser steps of the global batch of 128): enough to read ~75% of the digits, so that
accuracies compare."""

import json
import re
import socket
import subprocess
import sys

import pytest

from handprop.gate import problems as config_problems

from conftest import ROOT, compose_config, run_cli, tensorboard_run

SMALL = [
    "model.hidden=[32]",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=4",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.pictures=null",
    "callbacks.gradient_audit.every_n_steps=8",
]


def _train(*args, env=None, timeout=600):
    return run_cli(*args, env=env, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica_line(run_dir):
    match = re.search(
        r"replicas: (\d+) processes, identical parameters, sha256 ([0-9a-f]{64})", (run_dir / "train.log").read_text()
    )
    assert match, (run_dir / "train.log").read_text()[-2000:]
    return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    proc = _train("train.py", *SMALL, "trainer.devices=1", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_ddp_run_from_the_cli_is_one_run_with_identical_replicas(tmp_path, single_process_run):
    run_dir = tmp_path / "run"
    proc = _train("train.py", *SMALL, "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # one run directory, nothing beside it
    events = tensorboard_run(run_dir)  # one TensorBoard run, named after the overrides
    names = sorted(p.name for p in run_dir.iterdir() if p != events)
    assert names == [
        ".hydra",
        ".lock",
        "backprop",
        "checkpoints",
        "metrics.csv",
        "metrics.json",
        "train.log",
        "train_ddp_process_1.log",
    ], names
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    index = json.loads((run_dir / "backprop" / "index.json").read_text())  # the Backprop tab's, by rank 0 alone
    assert [s["epoch"] for s in index["snapshots"]] == [0, 1, 2] and not list(run_dir.glob("backprop/*.part"))
    assert _replica_line(run_dir)[0] == 2  # both processes ended with bitwise the same parameters
    # ... trained in chunks: many optimiser steps per Lightning step, each step's gradient
    # averaged over both processes (model.chunk chosen for the small network)
    chunk = re.search(r"training: (\d+) optimiser steps per Lightning step", (run_dir / "train.log").read_text())
    assert chunk and int(chunk.group(1)) > 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == single_process_run["trainer/global_step"] == 64  # the same global batch
    # the same recipe on the same global batch: the same accuracy, up to dropout masks and
    # augmentation drawn per process (500 test digits: 0.2% each)
    assert abs(metrics["test/acc"] - single_process_run["test/acc"]) <= 0.03, (metrics, single_process_run)
    assert metrics["test/acc"] > 0.6  # trained: chance is 0.1


@pytest.mark.slow
def test_torchrun_two_nodes_over_loopback_train_to_the_same_weights(tmp_path, single_process_run):
    run_dir, port = tmp_path / "run", _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "train.py",
                *SMALL,
                "trainer=ddp",
                "trainer.devices=1",
                "trainer.num_nodes=2",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    events = tensorboard_run(run_dir)
    names = sorted(p.name for p in run_dir.iterdir() if p != events)
    expected = [".hydra", ".lock", "backprop", "checkpoints", "metrics.csv", "metrics.json", "train.log"]
    assert names == [*expected, "train_rank1.log"], names
    assert _replica_line(run_dir)[0] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 64
    assert abs(metrics["test/acc"] - single_process_run["test/acc"]) <= 0.03, (metrics, single_process_run)


def test_a_global_batch_that_does_not_divide_is_refused_before_launch(tmp_path):
    cfg = compose_config("train", ["trainer=ddp", "trainer.devices=3", "data.batch_size=128"], tmp_path)
    (problem,) = config_problems(cfg)
    assert problem.startswith("data.batch_size=128: is the global batch and must divide evenly among the 3 processes")
    assert "data.batch_size=126" in problem
    cfg = compose_config(
        "train", ["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2", "data.batch_size=130"], tmp_path
    )
    assert "among the 4 processes" in config_problems(cfg)[0]
    assert config_problems(compose_config("train", ["trainer=ddp", "trainer.devices=4"], tmp_path)) == []


def test_the_cli_says_so_and_launches_nothing(tmp_path):
    proc = _train(
        "train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=3", f"hydra.run.dir={tmp_path}/run"
    )
    assert proc.returncode == 2
    assert "data.batch_size=128: is the global batch and must divide evenly among the 3 processes" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# two jobs of a small run, each on two CPU processes
SWEEP = ("-m", "optimizer.lr=0.01,0.02", "trainer.accelerator=cpu", "trainer.devices=2", "debug=fast")


def test_a_sweep_with_trainer_ddp_is_refused_not_hung(tmp_path):
    proc = _train("train.py", *SWEEP, "trainer=ddp", f"hydra.sweep.dir={tmp_path}/sweep", timeout=120)
    assert proc.returncode == 2
    assert "cannot run inside a -m sweep" in proc.stderr and "trainer=ddp_spawn" in proc.stderr


@pytest.mark.slow
def test_a_sweep_with_trainer_ddp_spawn_runs_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    # (test=false: under ddp_spawn the test starts its own processes, as fitting does; what is
    # tested here is the second job's start after the first job's processes have ended)
    proc = _train(
        "train.py", *SWEEP, "trainer=ddp_spawn", "callbacks.pictures=null", "test=false", f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, lr in (("0", 0.01), ("1", 0.02)):
        assert json.loads((sweep / job / "metrics.json").read_text())["trainer/global_step"] == 8
        log = (sweep / job / "train.log").read_text()  # written by the spawned process of rank 0 too
        assert re.findall(r"INFO    epoch (\d)/2  train loss", log) == ["1", "2"] and "  layer 1: Linear" in log
        assert f"optimizer.lr={lr}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
