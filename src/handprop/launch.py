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

from omegaconf import DictConfig, open_dict

from .console import record_failure, tell
from .errors import HandpropError, RunDirectoryError
from .rundir import checkpoint_dirs, launched_rank

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


def refuse_an_earlier_sweep(directory: Path, fill_in: bool) -> None:
    """A sweep started into a directory that holds another sweep's jobs would mix the two
    (job 0 of each in ``0/``): refused, unless ``fill_in`` asks to run only its jobs that
    have no result (``sweep_job`` keeps the others)."""
    jobs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")] if directory.is_dir() else []
    if jobs and not fill_in:
        raise RunDirectoryError(
            f"{directory} already holds a sweep ({len(jobs)} job directories): a new sweep there would mix "
            "the two. Leave hydra.sweep.dir out for a fresh directory, or add fill_in=true to run only the "
            "jobs of that sweep that have no result (the same command that started it)"
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


class Job:
    """One job of a sweep: its directory, its overrides and its record."""

    def __init__(self, cfg: DictConfig, overrides: list[str], launcher: DictConfig | None):
        self.cfg, self.launcher = cfg, launcher
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
        if not earlier or earlier.get("status") != "done" or not metrics.is_file():
            return None
        if earlier.get("overrides") != self.overrides:
            raise HandpropError(
                f"{self.dir} holds a job of another sweep ({' '.join(earlier.get('overrides') or [])}), not "
                f"{' '.join(self.overrides)}: fill in a sweep with the command that started it, or start a new "
                "sweep (leave hydra.sweep.dir out)"
            )
        return json.loads(metrics.read_text())

    def own_checkpoint(self) -> Path | None:
        """The newest checkpoint this job left in its own directory (interrupted, requeued)."""
        found = [d / name for d in checkpoint_dirs(self.cfg) for name in RESUMABLE if (d / name).is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None


def sweep_job(cfg: DictConfig, train: Callable[[], dict], overrides: list[str], launcher) -> float | None:
    """Run one job of a sweep with ``train()``; the value a sweeper optimises, or None for
    a job that failed (recorded in its ``job.json``, told on stderr and in its train.log)."""
    job = Job(cfg, overrides, launcher)
    metric = cfg.get("optimized_metric", "val/acc")
    try:
        done = job.result()
    except HandpropError as e:
        tell(f"error: {e}")
        return None  # (another sweep's record: left as it is)
    if done is not None:
        log.info("job %s already has its result (metrics.json): kept, not run again", job.dir.name)
        return done.get(metric)

    threads = job_threads(launcher)
    if threads is not None:
        import torch  # noqa: PLC0415 -- (imported already by the training run this job starts)

        torch.set_num_threads(threads[0])
        log.info("threads: %d (%s)", threads[0], threads[1])
    resume = job.own_checkpoint() if not cfg.get("ckpt_path") else None
    if resume is not None:
        with open_dict(cfg):
            cfg.ckpt_path = str(resume)
        log.info("this job's own checkpoint %s: the job resumes from it", resume)

    import torch  # noqa: PLC0415

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
    with _submitit_signal() as warned:
        try:
            metrics = train()
        except HandpropError as e:
            tell(f"error: {e}")
            job.write("failed", exit=2, error=one_line(str(e)), wall_s=time.perf_counter() - began)
            return None
        except SystemExit as e:  # an interrupt (Ctrl-C 130, SIGTERM 143) after its checkpoint
            code = e.code if isinstance(e.code, int) else 1
            if warned["signal"] is not None:
                job.write("requeued", exit=code, error="time limit or preemption", wall_s=time.perf_counter() - began)
                try:
                    warned["requeue"]()  # submitit: checkpoint (the same job, again), requeue, exit
                except Exception as not_requeued:  # (timed out too often): the job ends here, the sweep goes on
                    job.write("failed", exit=code, error=str(not_requeued))
                    return None
            stopped = f"stopped (exit status {code})"
            job.write("interrupted", exit=code, error=stopped, wall_s=time.perf_counter() - began)
            raise
        except Exception as e:
            record_failure()
            first = one_line(str(e))
            tell(f"error: {type(e).__name__}: {first} (the traceback is in {job.dir / 'train.log'})")
            job.write("failed", exit=1, error=f"{type(e).__name__}: {first}", wall_s=time.perf_counter() - began)
            return None
    job.write("done", exit=0, error=None, wall_s=time.perf_counter() - began)
    return metrics.get(metric)


@contextlib.contextmanager
def _submitit_signal():
    """Inside a submitit job: its time-limit / preemption signal stops training as SIGTERM
    does; ``requeue()`` then runs submitit's own handler (checkpoint, requeue, exit)."""
    state: dict = {"signal": None, "requeue": lambda: None}
    if not os.environ.get("SUBMITIT_EXECUTOR") or threading.current_thread() is not threading.main_thread():
        yield state
        return
    number = getattr(signal, f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}", signal.SIGUSR2)
    submitit = signal.getsignal(number)

    def warned(signum, frame) -> None:
        log.warning("%s: the job stops before the next batch and is requeued", signal.Signals(signum).name)
        state["signal"] = signum
        stop = signal.getsignal(signal.SIGTERM)  # Lightning's, while it trains: stop before the next batch
        if callable(stop):
            stop(signal.SIGTERM, frame)

    def requeue() -> None:
        signal.signal(number, submitit)
        if callable(submitit):
            submitit(number, None)

    state["requeue"] = requeue
    signal.signal(number, warned)
    try:
        yield state
    finally:
        if signal.getsignal(number) is warned:
            signal.signal(number, submitit)
