"""A job of a ``-m`` sweep, whichever launcher runs it: one process after another (Hydra's
basic launcher), several at once on one machine (``hydra/launcher=joblib``), or submitit's
jobs (``hydra/launcher=local`` to try it here, ``hydra/launcher=slurm`` on a cluster).

Around its training run a job

- **takes its share of the cores**: PyTorch's default of one thread per core collapses
  when several processes compete for the cores, so a joblib job gets cores / n_jobs
  threads and a submitit job its ``cpus_per_task`` (``job_threads``);
- **records how it ended** in ``job.json`` in its directory -- ``running`` with its pid
  while it runs, then ``done``, ``failed`` (the error line and exit status),
  ``interrupted`` or ``requeued`` -- and returns instead of raising: one failed job never
  stops the others, and the sweep's summary lists it (handprop.sweep);
- **resumes itself**: a job whose directory holds its own checkpoint and no result (a
  submitit job requeued after its time limit or a preemption, or a job of an interrupted
  sweep filled in with ``fill_in=true``) continues from ``interrupted.ckpt`` or
  ``last.ckpt``; a job with a result is not run again;
- **survives the cluster's signal**: submitit warns a job with SIGUSR2 before its time
  limit or a preemption. Here that signal stops training before the next batch, as
  SIGTERM does (the interrupt checkpoint of exactly where training stood), and only then
  hands over to submitit, which requeues the job (``checkpoint`` of Hydra's launcher).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from omegaconf import DictConfig, open_dict

from .console import record_failure, tell
from .errors import HandpropError, RunDirectoryError
from .rundir import checkpoint_dirs, launched_rank, launched_world_size

log = logging.getLogger(__name__)

JOB_RECORD = "job.json"
RESUMABLE = ("interrupted.ckpt", "last.ckpt")  # a job's own checkpoints, the newest first


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def job_threads(launcher: DictConfig | dict | None, available: int | None = None) -> tuple[int, str] | None:
    """The threads a job of this launcher should use, and why; None to leave PyTorch's
    default (one process at a time)."""
    launcher = launcher or {}
    target = str(launcher.get("_target_", ""))
    available = available or cores()
    if "joblib" in target:
        n_jobs = int(launcher.get("n_jobs") or 1)
        parallel = n_jobs if n_jobs > 0 else max(1, available + 1 + n_jobs)  # (joblib's -1: every core)
        parallel = min(parallel, available)
        return max(1, available // parallel), f"{available} cores / {parallel} jobs at once (joblib)"
    if "submitit" in target:
        cpus = int(launcher.get("cpus_per_task") or 1)
        return cpus, f"cpus_per_task={cpus} (submitit)"
    return None


def refuse_an_earlier_sweep(directory: Path, fill_in: bool, overrides: list[str], sweeper: str = "") -> None:
    """A sweep started into a directory that holds another sweep's jobs would mix the two
    (job 0 of each in ``0/``): refused, unless ``fill_in`` asks to run only the jobs of the
    same sweep (the same command: ``overrides``) that have no result; an Optuna search
    draws new trials each time, so it cannot be filled in."""
    jobs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")] if directory.is_dir() else []
    if not jobs:
        return
    if not fill_in:
        raise RunDirectoryError(
            f"{directory} already holds a sweep ({len(jobs)} job directories): a new sweep there would mix "
            "the two. Leave hydra.sweep.dir out for a fresh directory, or add fill_in=true to run only the "
            "jobs of that sweep that have no result (the same command that started it)"
        )
    if "optuna" in sweeper.lower():
        raise RunDirectoryError(
            "fill_in=true cannot fill in an Optuna search: it draws new trials each time. Start a new search "
            "(leave hydra.sweep.dir out), or keep the study in a database to continue it "
            "(hydra.sweeper.storage=sqlite:///study.db)"
        )
    earlier = directory / "multirun.yaml"
    if earlier.is_file():
        hydra = (yaml.safe_load(earlier.read_text()) or {}).get("hydra") or {}
        before = [o for o in (hydra.get("overrides") or {}).get("task") or [] if not o.startswith("fill_in=")]
        now = [o for o in overrides if not o.startswith("fill_in=")]
        if before != now:
            raise RunDirectoryError(
                f"{directory} holds the sweep of other overrides ({' '.join(before)}), not ({' '.join(now)}): "
                "fill it in with the command that started it, or start a new sweep (leave hydra.sweep.dir out)"
            )


def launcher_problem(launcher: DictConfig | dict | None) -> str | None:
    """What keeps this launcher from starting here (SLURM's commands missing), or None."""
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("SlurmLauncher") and not (shutil.which("sbatch") and shutil.which("srun")):
        return (
            "hydra/launcher=slurm submits the jobs with SLURM's sbatch and srun, which are not on this machine's "
            "PATH: start the sweep on the cluster's login node, or try it here with hydra/launcher=local"
        )
    return None


def git_commit(root: str | Path) -> str | None:
    """The checkout's commit (with ``+`` when its files differ from it), or None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src", "conf"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def one_line(message: str) -> str:
    """A message of several lines (the gate's, one problem a line) as one."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def read_record(job_dir: str | Path) -> dict | None:
    """A job's ``job.json``, or None (never started here, or not a job of a sweep)."""
    path = Path(job_dir) / JOB_RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def has_result(record: dict | None, job_dir: str | Path) -> bool:
    """A job's run finished: its metrics.json, and no record of an end other than ``done``
    (a run of an older handprop has no record)."""
    return (Path(job_dir) / "metrics.json").is_file() and (record is None or record.get("status") == "done")


class Job:
    """One job of a sweep: its directory, its overrides and its record."""

    def __init__(self, cfg: DictConfig, overrides: list[str]):
        self.cfg = cfg
        self.overrides = [o for o in overrides if not o.startswith("fill_in=")]  # (the same job, filled in)
        self.dir = Path(cfg.paths.output_dir)
        self.writes = launched_rank() == 0  # (a DDP job under srun: rank 0 keeps the record)
        self.record: dict = {}

    def write(self, status: str, **fields) -> None:
        self.record.update(status=status, **fields)
        if self.writes:  # (whole or not at all: written beside it, then renamed)
            temporary = self.dir / f".{JOB_RECORD}.{os.getpid()}"
            temporary.write_text(json.dumps(self.record, indent=2) + "\n")
            os.replace(temporary, self.dir / JOB_RECORD)

    def result(self) -> dict | None:
        """The metrics of this job's earlier, finished run (same overrides), if it has one."""
        earlier, metrics = read_record(self.dir), self.dir / "metrics.json"
        if not earlier:
            return None
        if earlier.get("overrides") != self.overrides:
            raise HandpropError(
                f"{self.dir} holds a job of another sweep ({' '.join(earlier.get('overrides') or [])}), not "
                f"{' '.join(self.overrides)}: fill in a sweep with the command that started it, or start a new "
                "sweep (leave hydra.sweep.dir out)"
            )
        return json.loads(metrics.read_text()) if has_result(earlier, self.dir) else None

    def own_checkpoint(self) -> Path | None:
        """The newest checkpoint this job left in its own directory (interrupted, requeued)."""
        found = [d / name for d in checkpoint_dirs(self.cfg) for name in RESUMABLE if (d / name).is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None


def sweep_job(
    cfg: DictConfig, train: Callable[[], dict], overrides: list[str], launcher=None, sweeper=None
) -> float | None:
    """Run one job of a sweep with ``train()``; the value a sweeper optimises, or None for
    a job that failed (recorded in its ``job.json``, told on stderr and in its train.log).

    The failure is raised instead, once recorded, where returning would hide it: for
    Optuna's sweeper, which counts failed trials against its ``max_failure_rate``, and for
    a job of several processes (DDP under srun), whose other processes would otherwise
    wait for this one."""
    job = Job(cfg, overrides)
    metric = cfg.get("optimized_metric", "val/acc")
    raises = "optuna" in str((sweeper or {}).get("_target_", "")).lower() or launched_world_size() > 1
    try:
        done = job.result()
    except HandpropError as e:  # (another sweep's job: its directory is left as it is)
        tell(f"error: {e}")
        if raises:
            raise
        return None
    if done is not None:
        log.info("job %s already has its result (metrics.json): kept, not run again", job.dir.name)
        return done.get(metric)

    import torch  # noqa: PLC0415 -- (imported already by train.py's task, for the run it starts)

    threads = job_threads(launcher)
    if threads is not None:
        torch.set_num_threads(threads[0])
        log.info("threads: %d (%s)", threads[0], threads[1])
    resume = job.own_checkpoint() if not cfg.get("ckpt_path") else None
    if resume is not None:
        with open_dict(cfg):
            cfg.ckpt_path = str(resume)
        log.info("this job's own checkpoint %s: the job resumes from it", resume)
    job.write(
        "running",
        job=job.dir.name,
        overrides=job.overrides,
        pid=os.getpid(),
        host=socket.gethostname(),
        threads=torch.get_num_threads(),
        commit=git_commit(cfg.paths.root_dir),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        resumed_from=str(resume) if resume else None,
    )
    began = time.perf_counter()

    def ended(status: str, code: int, error: str | None) -> None:
        job.write(status, exit=code, error=error, wall_s=time.perf_counter() - began)

    with _submitit_signal(lambda: ended("requeued", 143, "time limit or preemption")) as warned:
        try:
            metrics = train()
        except (SystemExit, KeyboardInterrupt) as e:  # an interrupt (Ctrl-C 130, SIGTERM 143), after its checkpoint
            code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
            if warned["signal"] is not None and not warned["requeued"]:
                try:
                    warned["requeue"]()  # submitit: checkpoint (the same job, again), requeue, exit
                except Exception as not_requeued:  # (timed out too often): the job ends here, the sweep goes on
                    ended("failed", code, str(not_requeued))
                    return None
            if not warned["requeued"]:
                ended("interrupted", code, f"stopped (exit status {code})")
            raise
        except Exception as e:  # a config or file the user can fix (exit status 2), or a bug (1)
            if isinstance(e, HandpropError):
                code, error = 2, one_line(str(e))
                tell(f"error: {e}")
            else:
                record_failure()
                code, error = 1, f"{type(e).__name__}: {one_line(str(e))}"
                tell(f"error: {error} (the traceback is in {job.dir / 'train.log'})")
            ended("failed", code, error)
            if raises:
                raise
            return None
    ended("done", 0, None)
    return metrics.get(metric)


def _in_a_submitit_job() -> bool:
    try:
        import submitit  # noqa: PLC0415 -- (the sweep extra)

        submitit.JobEnvironment()  # (raises outside a job that submitit started)
    except (ImportError, RuntimeError):
        return False
    return True


@contextlib.contextmanager
def _submitit_signal(requeued: Callable[[], None]):
    """Inside a submitit job: its time-limit / preemption signal stops training as SIGTERM
    does, and ``requeue()`` then runs submitit's own handler (checkpoint, requeue, exit).
    Outside training (the data loading, the final test) nothing would stop: the job is
    requeued at once, and resumes from its last checkpoint. ``requeued()`` records it."""
    state: dict = {"signal": None, "requeue": lambda: None, "requeued": False}
    if not _in_a_submitit_job() or threading.current_thread() is not threading.main_thread():
        yield state
        return
    number = getattr(signal, f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}", signal.SIGUSR2)
    submitit, no_trainer = signal.getsignal(number), signal.getsignal(signal.SIGTERM)

    def requeue() -> None:
        if state["requeued"]:
            return
        state["requeued"] = True
        requeued()
        signal.signal(number, submitit)
        if callable(submitit):
            submitit(number, None)

    def warned(signum, frame) -> None:
        state["signal"] = signum
        stop = signal.getsignal(signal.SIGTERM)
        if stop is no_trainer or not callable(stop):  # no trainer is fitting: nothing to stop
            log.warning("%s: the job is requeued now", signal.Signals(signum).name)
            requeue()
            return
        log.warning("%s: the job stops before the next batch and is requeued", signal.Signals(signum).name)
        stop(signal.SIGTERM, frame)  # Lightning's, while it trains

    state["requeue"] = requeue
    signal.signal(number, warned)
    try:
        yield state
    finally:
        if signal.getsignal(number) is warned:
            signal.signal(number, submitit)
