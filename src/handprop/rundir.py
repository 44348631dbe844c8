"""A run's directory: one run owns it, and every command printed about it pastes.

- **Unique by construction.** The default ``hydra.run.dir`` is ``outputs/<date>/<time>``;
  ``${unique_dir:...}`` claims it with an exclusive ``mkdir`` and, when another run
  started in the same second, takes ``<time>-1``, ``<time>-2``, ... instead.
- **Locked for the run's lifetime.** ``RunDirectoryLock`` (a Hydra callback) takes an
  exclusive lock on ``<run dir>/.lock`` before Hydra writes anything there; a second
  process pointed at the same directory is refused at once, naming the holder, and a run
  that would overwrite another run's checkpoints is refused there too. The lock dies
  with its process (``flock``), so a killed run leaves nothing to clean up.
- **The rank that owns it.** Under torchrun, srun or Lightning's own launcher only the
  process of global rank 0 locks the directory and writes ``.hydra/``; the others share
  it. The rank comes from the launcher's variables, and only when a launcher started
  more than one process: a stray ``LOCAL_RANK``, ``RANK`` or ``SLURM_PROCID`` in a single
  process's environment is refused with its name (it would make Lightning skip every
  rank-zero write: metrics.json, TensorBoard).
- **Commands that paste.** ``command_line`` quotes every argument for the shell and for
  Hydra's override grammar, whatever the run directory's name holds (spaces, quotes,
  ``$``, non-ASCII).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .errors import HandpropError, RunDirectoryError

LOCK_FILE = ".lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # what Lightning reads
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "JSM_NAMESPACE_SIZE")


# --------------------------------------------------------------------------- ranks


def launch_problem(environ=os.environ) -> str | None:
    """A rank variable that says this is not the first process while no launcher started
    several (WORLD_SIZE / SLURM_NTASKS absent or 1): the message naming it, else None."""
    world = launched_world_size(environ)
    stray = [f"{v}={environ[v]}" for v in RANK_VARIABLES if v in environ and _int(environ[v]) != 0]
    if stray and world <= 1:
        names = " ".join(f"-u {s.split('=')[0]}" for s in stray)
        return (
            f"{', '.join(stray)} is set in the environment, but no launcher started several processes "
            "(WORLD_SIZE and SLURM_NTASKS are unset or 1): this single process would act as a non-zero rank "
            f"and write no metrics.json, TensorBoard run or .hydra/. Unset it (env {names} python ...), "
            "or launch with torchrun / srun / trainer=ddp."
        )
    return None


def exit_on_launch_problem() -> None:
    """For the entry points, before anything else: a stray rank variable ends the program
    with the message, exit status 2."""
    problem = launch_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def launched_world_size(environ=os.environ) -> int:
    """How many processes a launcher (torchrun, srun, LSF's jsrun) started, 1 when none did."""
    return max((_int(environ.get(v)) or 1 for v in WORLD_SIZE_VARIABLES), default=1)


def launched_rank(environ=os.environ) -> int:
    """This process's global rank when a launcher (torchrun, srun, Lightning's DDP
    launcher) started several processes; 0 otherwise."""
    if launch_problem(environ) is not None:
        return 0  # refused by the entry point; never treated as a secondary rank
    for v in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if _int(environ.get(v)) is not None:
            return _int(environ[v])
    node, local = _int(environ.get("NODE_RANK")) or 0, _int(environ.get("LOCAL_RANK")) or 0
    return node + local  # Lightning's launcher: only whether it is 0 matters here


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# conf/hydra/default.yaml: processes 1..N of a launch share rank 0's run directory; they log
# to train_rank<N>.log and leave .hydra/ to rank 0.
OmegaConf.register_new_resolver(
    "job_name", lambda name: name if launched_rank() == 0 else f"{name}_rank{launched_rank()}", replace=True
)
OmegaConf.register_new_resolver("output_subdir", lambda subdir: subdir if launched_rank() == 0 else None, replace=True)


def run_name(overrides: str, limit: int = 96) -> str:
    """A run's name from its command-line overrides (Hydra's ``override_dirname``), safe as
    one directory name: no '/', at most ``limit`` characters -- a longer one keeps its
    start and ends in a hash of the whole, so that different runs keep different names."""
    name = overrides.replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# conf/logger/default.yaml: version: ${run_name:${hydra:job.override_dirname}}. Registered here, where a
# sweep's parent process has it too: a launcher's worker gets the parent's resolvers for every job.
OmegaConf.register_new_resolver("run_name", run_name, replace=True)


# --------------------------------------------------------------------------- unique directories

_claimed: dict[tuple[str, object], str] = {}


def unique_dir(base: str, claim: object = None) -> str:
    """``base`` if this process can create it, else the first free ``base-1``, ``base-2``,
    ... -- created here, when the value is first read, with an exclusive mkdir, so two
    runs never share one. The same answer for the same ``base`` and ``claim`` within a
    process (Hydra resolves its run dir more than once; ``compose`` gives each config a
    ``claim`` of its own)."""
    if (base, claim) not in _claimed:
        _claimed[base, claim] = new_dir(base)
    return _claimed[base, claim]


def new_dir(base: str) -> str:
    """``base``, or the first free ``base-1``, ``base-2``, ..., created now (an exclusive
    mkdir): a directory no other run has."""
    candidate = base
    try:
        Path(base).parent.mkdir(parents=True, exist_ok=True)
        for n in range(10_000):
            candidate = base if n == 0 else f"{base}-{n}"
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            return candidate
        raise RunDirectoryError(f"{base}: ten thousand runs already started under this name")
    except OSError as e:
        raise RunDirectoryError(
            f"cannot create the run directory {candidate}: {e.strerror}. "
            "Choose a writable place with hydra.run.dir=DIR (or paths.log_dir=DIR)"
        ) from None


OmegaConf.register_new_resolver("unique_dir", unique_dir, replace=True, use_cache=True)


# --------------------------------------------------------------------------- the lock

_held: dict[str, int] = {}  # run directory -> the open file descriptor holding its lock


def lock_run_directory(directory: str | Path, owner: str, check: Callable[[], None] = lambda: None) -> None:
    """Take the run directory's lock for this process's lifetime, or refuse naming the
    process that holds it. ``check`` runs once the lock is held, before this process
    records itself in it: a refusal there leaves the directory as it was."""
    directory = Path(directory).absolute()
    if str(directory) in _held:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        created = not (directory / LOCK_FILE).exists()
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirectoryError(
            f"cannot write the run directory {directory}: {e.strerror}. Choose a writable one with hydra.run.dir=DIR"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirectoryError(
            f"{directory} is in use by another run ({holder}). Wait for it to end, or give this "
            "run its own directory (leave hydra.run.dir out for a fresh one)"
        ) from None
    try:
        check()
    except BaseException:
        if created:
            os.unlink(directory / LOCK_FILE)
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{owner}\n".encode(),
            0,
        )
    except OSError as e:
        os.close(fd)
        raise RunDirectoryError(
            f"cannot write the run directory {directory}: {e.strerror}. "
            "Free some space or choose another directory with hydra.run.dir=DIR"
        ) from None
    _held[str(directory)] = fd


class RunDirectoryLock(HydraCallback):
    """Hydra callback: before Hydra writes anything into the run directory (its log file,
    ``.hydra/``), lock it for this run and refuse a run that would overwrite another
    run's checkpoints. A refusal is one line on stderr and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._claim(config, "run", check_checkpoints=True)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._claim(config, "sweep", check_checkpoints=False)

    @staticmethod
    def _claim(config: DictConfig, mode: str, check_checkpoints: bool) -> None:

        HydraConfig.instance().set_config(config)  # (Hydra sets it next, for the job; the paths need it now)
        try:
            if launched_world_size() > 1 and not any(
                o.startswith(f"hydra.{mode}.dir=") for o in config.hydra.overrides.hydra
            ):
                raise RunDirectoryError(
                    f"a launcher started {launched_world_size()} processes: give them all the same "
                    f"(shared) directory with hydra.{mode}.dir=DIR, or each picks its own"
                )
            if launched_rank() != 0:
                return  # rank 0 of this launch holds it
            directory = _resolved(config, f"hydra.{mode}.dir")
            hydra_cfg = HydraConfig.get()
            with read_write(hydra_cfg), open_dict(hydra_cfg):  # what run_job sets next: paths.output_dir resolves
                hydra_cfg.runtime.output_dir = str(Path(directory).absolute())
            lock_run_directory(
                directory,
                command_line(sys.argv[0], sys.argv[1:]),
                check=lambda: (
                    refuse_to_overwrite(checkpoint_dirs(config), config.get("ckpt_path")) if check_checkpoints else None
                ),
            )
            keep_earlier_config(Path(directory) / str(config.hydra.output_subdir or ".hydra"))
        except HandpropError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)


def _resolved(config: DictConfig, key: str) -> str:
    """A config value; a HandpropError raised while resolving it (``unique_dir``) as itself,
    not wrapped in OmegaConf's InterpolationResolutionError."""
    try:
        return str(OmegaConf.select(config, key, throw_on_resolution_failure=True))
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, HandpropError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def recorded_overrides(run_dir: str | Path) -> list[str]:
    """A run's command-line overrides as Hydra recorded them (``.hydra/overrides.yaml``),
    as typed: read as plain YAML, so that ``x=${paths.output_dir}/y`` stays text instead of
    being resolved out of context. [] when there is no record."""
    recorded = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        return []
    return [str(o) for o in yaml.safe_load(recorded.read_text()) or []]


def keep_earlier_config(subdir: Path) -> None:
    """A resume into a run's own directory: Hydra is about to write this run's config over
    the earlier one; keep the earlier files as ``.hydra/history/<n>/``."""
    earlier = [p for p in subdir.glob("*.yaml") if p.is_file()] if subdir.is_dir() else []
    if earlier:
        history = subdir / "history"
        n = 1 + max((int(p.name) for p in history.glob("*") if p.name.isdigit()), default=0)
        (history / str(n)).mkdir(parents=True)
        for p in earlier:
            shutil.copy2(p, history / str(n) / p.name)


def checkpoint_dirs(cfg: DictConfig) -> set[Path]:
    """The directories this run's checkpoint callbacks write to."""
    callbacks = cfg.get("callbacks") or {}
    return {Path(c.dirpath).resolve() for c in callbacks.values() if c is not None and c.get("dirpath")}


def refuse_to_overwrite(dirs: set[Path], ckpt_path: str | None) -> None:
    """A new run in a directory that holds another run's checkpoints would overwrite them
    (last.ckpt first). Only resuming one of that directory's own checkpoints may write there."""
    existing = sorted(p for d in dirs if d.is_dir() for p in d.glob("*.ckpt"))
    if not existing or (ckpt_path is not None and Path(ckpt_path).resolve().parent in dirs):
        return
    last = next((p for p in existing if p.stem in ("last", "interrupted")), existing[-1])
    raise RunDirectoryError(
        f"{last.parent} already holds checkpoints of another run ({', '.join(p.name for p in existing)}); "
        f"this run would overwrite them. Resume that run with ckpt_path={last} (and the same "
        "hydra.run.dir), or start this one in a fresh directory (the default hydra.run.dir makes one per run)."
    )


# --------------------------------------------------------------------------- commands that paste

# What Hydra's override grammar takes unquoted in a value (a conservative subset: no ',',
# which makes a sweep list, no '~', no spaces, quotes or '$').
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:+@%-]+")


def hydra_value(value: str) -> str:
    """A string as a Hydra override value: as is when plain, else single-quoted. Inside
    quotes Hydra un-escapes a backslash only before a quote or at the end, and OmegaConf
    reads ``${`` as an interpolation: those are escaped, nothing else."""
    value = str(value)
    if _PLAIN_VALUE.fullmatch(value) and _reads_back(value):  # not 'null', '1e3', 'true', ...: those have types
        return value
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)  # backslashes before a quote doubled
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted)  # ... and at the end
    return "'" + quoted.replace("${", "\\${") + "'"


def _reads_back(value: str) -> bool:
    return override_parser().parse_override(f"k={value}").value() == value


@functools.cache
def override_parser() -> OverridesParser:
    """Hydra's override parser (building its grammar takes a while: once per process)."""
    return OverridesParser.create()


def command_line(program: str, args: list[str], **settings: str) -> str:
    """``python <program> <args...> key=value ...``, every argument quoted for the shell
    (``args`` are taken as Hydra overrides already; ``settings`` are quoted for Hydra too)."""
    parts = [*args, *(f"{k}={hydra_value(v)}" for k, v in settings.items())]
    return " ".join(["python", shlex.quote(Path(program).name), *map(shlex.quote, parts)])
