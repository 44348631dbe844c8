"""Sweeps beyond one process: Hydra's joblib launcher (parallel jobs on one machine) and
submitit's (a SLURM cluster, or its local executor), each job with its share of the cores,
a failed job recorded while the sweep goes on, a requeued job resumed from its checkpoint."""

import json
import os
import signal
import stat
import time

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handprop.errors import ConfigError, RunDirectoryError
from handprop.launch import cores, job_threads, read_record, refuse_an_earlier_sweep, sweep_job

from conftest import FAST, ROOT, run_cli, start_train, tensorboard_run, wait_for

SMALL = [*FAST, "model.hidden=[32]"]


def _multirun(log_dir, *overrides, status=0):
    """``python train.py -m`` with the default sweep directory under ``log_dir``, ending
    with exit status ``status`` (None: any); the process and the sweep directories."""
    proc = run_cli(
        "train.py",
        "-m",
        *overrides,
        *SMALL,
        f"paths.log_dir={log_dir}",
        env={"PYTHONPATH": str(ROOT / "tests")},
    )
    if status is not None:
        assert proc.returncode == status, proc.stderr[-3000:]
    sweeps = sorted((log_dir / "multirun").glob("*/*")) if (log_dir / "multirun").is_dir() else []
    return proc, sweeps


def _summary(sweep):
    return (sweep / "summary.md").read_text(), json.loads((sweep / "summary.json").read_text())


@pytest.mark.slow
def test_a_joblib_sweep_keeps_the_good_jobs_when_the_gate_refuses_one(tmp_path):
    """Three jobs through joblib, two at a time (so that a worker runs a second job), the
    default sweep directory: one directory for the sweep whoever resolves it, each job's
    threads its share of the cores, the refused job recorded and listed while the others'
    results are kept; the same sweep again into that directory is refused."""
    dropouts = "model.dropout=0.1,0.2,2"
    proc, sweeps = _multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", dropouts, status=2)
    # (2: the one job without a result was refused for its config)
    assert "1 of 3 jobs have no result (listed in summary.md)" in proc.stderr + proc.stdout
    assert len(sweeps) == 1  # (the parent and each worker resolve the same directory)
    sweep = sweeps[0]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1", "2"]
    share = max(1, cores() // min(2, cores()))
    accs = {}
    for job in ("0", "1"):
        good = read_record(sweep / job)
        assert good["status"] == "done" and good["threads"] == share
        assert (
            f"threads: {share} ({cores()} cores / {min(2, cores())} jobs at once (joblib))"
            in (sweep / job / "train.log").read_text()
        )
        accs[job] = json.loads((sweep / job / "metrics.json").read_text())["val/acc"]
    refused = read_record(sweep / "2")
    assert refused["status"] == "failed" and refused["exit"] == 2
    assert refused["error"] == "bad config: model.dropout=2: must be a probability in [0, 1)"
    assert not (sweep / "2" / "metrics.json").exists()
    text, record = _summary(sweep)
    best = max(accs, key=accs.get)
    assert all(f"| {job} | {acc:.4f} |" in text for job, acc in accs.items()) and "| 2 | failed |" in text
    assert "## Jobs without a result" in text
    assert "| 2 | failed (exit status 2): bad config: model.dropout=2: must be a probability" in text
    assert [r["run"] for r in record["runs"]][-1] == "2"
    assert f"best run of 3: {sweep / best}, val/acc={accs[best]:.4f}" in proc.stderr + proc.stdout
    events = EventAccumulator(str(tensorboard_run(sweep / "0")))  # its HParams record, for TensorBoard's tab
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    again, _ = _multirun(tmp_path, "hydra/launcher=joblib", dropouts, f"hydra.sweep.dir={sweep}", status=2)
    assert "already holds a sweep (3 job directories)" in again.stderr and "fill_in=true" in again.stderr
    # (filled in, it runs only the jobs without a result: the unit tests below)


@pytest.mark.slow
def test_a_submitit_local_sweep_lists_a_job_that_raises_and_resumes_a_signalled_one(tmp_path):
    """submitit's local executor, two jobs in processes of their own, each with the threads
    cpus_per_task asks for. The job whose training raises is recorded (exit status 1, its
    error) and listed. The other is sent the time-limit / preemption signal (SIGUSR2) while
    it trains: it stops before the next batch with its checkpoint, submitit starts it
    again, and it resumes from that checkpoint to the end of its run; its result is kept."""
    marker, log_dir = tmp_path / "sleeping", tmp_path / "logs"
    proc = start_train(
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.cpus_per_task=2",
        "+callbacks.bug._target_=conftest.RaiseInTraining",
        "+callbacks.bug.really=true,false",
        "+callbacks.sleep._target_=conftest.SleepAt",  # (a window to signal the job that trains)
        "+callbacks.sleep.stage=train",
        f"+callbacks.sleep.marker={marker}",
        "+callbacks.sleep.batch=2",
        "+callbacks.sleep.seconds=2",
        *SMALL,
        f"paths.log_dir={log_dir}",
    )
    try:
        wait_for(marker, proc, timeout=120)
        (sweep,) = sorted(log_dir.glob("multirun/*/*"))
        first = read_record(sweep / "1")
        assert first["status"] == "running" and first["threads"] == 2  # (OMP_NUM_THREADS=1 in the environment)
        os.kill(first["pid"], signal.SIGUSR2)
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-3000:]  # (1: a job without a result, and not for its config)

    raised, resumed = read_record(sweep / "0"), read_record(sweep / "1")
    assert raised["status"] == "failed" and raised["exit"] == 1
    assert raised["error"] == "KeyError: 'a deliberate bug'"
    assert "KeyError: 'a deliberate bug'" in (sweep / "0" / "train.log").read_text()  # with its traceback
    assert resumed["status"] == "done" and resumed["pid"] not in (first["pid"], raised["pid"], os.getpid())
    assert resumed["resumed_from"] == str(sweep / "1" / "checkpoints" / "interrupted.ckpt")
    log = (sweep / "1" / "train.log").read_text()
    assert "SIGUSR2: the job stops before the next batch and is requeued" in log and "resuming the run of" in log
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 8  # 2 epochs of 4 batches, over the two starts

    text, record = _summary(sweep)
    assert f"| 1 | {metrics['val/acc']:.4f} |" in text
    assert "| 0 | failed (exit status 1): KeyError: 'a deliberate bug' | +callbacks.bug.really=True |" in text
    assert record["runs"][0]["run"] == "1"


def _stub(folder, name, body):
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_a_slurm_sweep_submits_the_script_its_config_asks_for(tmp_path):
    """hydra/launcher=slurm against stub sbatch / sacct: the array job's script asks for the
    partition, time limit, tasks, GPUs and CPUs of the config, the requeue and the warning
    signal before the limit; the submitted callable is Hydra's launcher, whose checkpoint
    hook resubmits the same job (which then resumes from its own checkpoint)."""
    stubs, scripts = tmp_path / "bin", tmp_path / "scripts"
    stubs.mkdir()
    scripts.mkdir()
    _stub(stubs, "sbatch", f'cp "$1" {scripts}/job.sh; echo "Submitted batch job 4242"')
    _stub(stubs, "sacct", "exit 0")
    _stub(stubs, "scancel", "exit 0")
    _stub(stubs, "srun", 'exec "$@"')
    proc = start_train(
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpuq",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.tasks_per_node=2",
        "trainer=ddp",
        "trainer.devices=2",
        "seed=0,1",
        f"paths.log_dir={tmp_path / 'logs'}",
        env={"PATH": f"{stubs}:{os.environ['PATH']}"},
    )
    try:
        wait_for(scripts / "job.sh", proc, timeout=120)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    script = (scripts / "job.sh").read_text()
    for line in (
        "#SBATCH --partition=gpuq",
        "#SBATCH --time=240",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --nodes=1",
        "#SBATCH --array=0-1%2",  # (two jobs, at most 256 at once)
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in script, f"{line} not in\n{script}"
    assert "srun" in script and "submitit.core._submit" in script
    submitted = sorted((tmp_path / "logs").glob("multirun/*/*/.submitit/**/*_submitted.pkl"))[0]
    import cloudpickle  # noqa: PLC0415 -- submitit's own serializer

    delayed = cloudpickle.loads(submitted.read_bytes())
    assert type(delayed.function).__name__ == "SlurmLauncher" and hasattr(delayed.function, "checkpoint")
    assert delayed.function.params["max_num_timeout"] == 3


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


@pytest.mark.parametrize(
    ("launcher", "available", "expected"),
    [
        ({"_target_": JOBLIB, "n_jobs": 2}, 16, 8),
        ({"_target_": JOBLIB, "n_jobs": -1}, 16, 1),  # (joblib's -1: a job per core)
        ({"_target_": JOBLIB, "n_jobs": 4}, 2, 1),
        ({"_target_": LOCAL, "cpus_per_task": 3}, 16, 3),
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16, None),  # one job at a time
    ],
)
def test_each_launcher_gives_its_jobs_their_share_of_the_cores(launcher, available, expected):
    threads = job_threads(launcher, available)
    assert (threads and threads[0]) == expected


def _job_config(job_dir):
    return OmegaConf.create(
        {
            "paths": {"output_dir": str(job_dir), "root_dir": str(ROOT)},
            "callbacks": {"last": {"dirpath": str(job_dir / "checkpoints")}},
            "optimized_metric": "val/acc",
            "ckpt_path": None,
        }
    )


def test_a_job_records_how_it_failed_and_returns_unless_its_failure_must_be_raised(tmp_path, monkeypatch):
    """A refused config (exit status 2) and a bug (1) are recorded and the job returns
    None, so that the sweep goes on; under Optuna's sweeper (which counts failed trials)
    and in a job of several processes (whose others would wait for it) it raises, once
    recorded."""

    def refused():
        raise ConfigError("bad config:\n  model.dropout=2: must be a probability in [0, 1)")

    def bug():
        raise KeyError("a deliberate bug")

    for name, work, status, error in (
        ("refused", refused, 2, "bad config: model.dropout=2: must be a probability in [0, 1)"),
        ("bug", bug, 1, "KeyError: 'a deliberate bug'"),
    ):
        job_dir = tmp_path / name
        job_dir.mkdir()
        assert sweep_job(_job_config(job_dir), work, ["seed=0"]) is None
        record = read_record(job_dir)
        assert (record["status"], record["exit"], record["error"]) == ("failed", status, error)
        assert record["overrides"] == ["seed=0"] and record["pid"] == os.getpid()

    optuna = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}
    (tmp_path / "trial").mkdir()
    with pytest.raises(KeyError):
        sweep_job(_job_config(tmp_path / "trial"), bug, ["seed=0"], sweeper=optuna)
    assert read_record(tmp_path / "trial")["status"] == "failed"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    (tmp_path / "ddp").mkdir()
    with pytest.raises(ConfigError):
        sweep_job(_job_config(tmp_path / "ddp"), refused, ["seed=0"])
    assert read_record(tmp_path / "ddp")["exit"] == 2


def test_a_job_with_its_result_is_kept_and_one_with_its_checkpoint_resumes(tmp_path):
    """Filled in: a job whose directory holds its finished run returns that run's metric
    without training; a job that holds its own checkpoint resumes from it; a directory
    that holds a job of other overrides is left as it is."""
    calls = []

    def train():
        calls.append(cfg.ckpt_path)
        return {"val/acc": 0.9}

    cfg = _job_config(tmp_path)
    assert sweep_job(cfg, train, ["seed=0", "fill_in=true"]) == 0.9 and calls == [None]
    assert read_record(tmp_path)["overrides"] == ["seed=0"]  # (fill_in=true: the same job)
    (tmp_path / "metrics.json").write_text(json.dumps({"val/acc": 0.8}))
    assert sweep_job(_job_config(tmp_path), train, ["seed=0"]) == 0.8 and len(calls) == 1  # kept, not run
    assert sweep_job(_job_config(tmp_path), train, ["seed=1"]) is None and len(calls) == 1  # another sweep's
    assert read_record(tmp_path)["overrides"] == ["seed=0"]

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = _job_config(resumed)
    sweep_job(cfg, train, ["seed=0"])
    assert calls[-1] == str(resumed / "checkpoints" / "last.ckpt")
    assert read_record(resumed)["resumed_from"] == calls[-1]


def test_a_sweep_directory_is_filled_in_only_by_the_sweep_that_made_it(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["seed=0,1"]}}}))
    with pytest.raises(RunDirectoryError, match="already holds a sweep .* fill_in=true"):
        refuse_an_earlier_sweep(tmp_path, False, ["seed=0,1"])
    refuse_an_earlier_sweep(tmp_path, True, ["seed=0,1", "fill_in=true"])  # the same sweep
    with pytest.raises(RunDirectoryError, match="other overrides"):
        refuse_an_earlier_sweep(tmp_path, True, ["seed=0,1,2", "fill_in=true"])
    with pytest.raises(RunDirectoryError, match="Optuna"):
        refuse_an_earlier_sweep(tmp_path, True, ["fill_in=true"], "hydra_plugins.optuna_sweeper.OptunaSweeper")
    refuse_an_earlier_sweep(tmp_path / "new", False, ["seed=0,1"])  # (no directory yet: nothing to refuse)
