"""Shared fixtures: Hydra configs composed the way train.py / eval.py compose them."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from prestarted import Prestarted, Server

from handprop.compose import compose
from handprop.data import FILES, write_idx

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run that takes seconds: a few batches, two epochs, no progress bar; and, with FAST,
# none of the pictures or the Backprop tab's snapshots, which a short run spends most of
# its time after the imports on (the tests that look at them start from DRAWN).
DRAWN = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
LEAN = ["callbacks.pictures=null", "callbacks.backprop_tab=null"]
FAST = [*DRAWN, *LEAN]


def compose_config(name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<name>.yaml as Hydra's app would, with the run directory set to output_dir."""
    return compose(overrides, output_dir, name)


@pytest.fixture
def train_cfg(tmp_path):
    return lambda *overrides: compose_config("train", [*FAST, *overrides], tmp_path)


@pytest.fixture
def drawn_cfg(tmp_path):
    """train_cfg with the pictures and the Backprop tab's snapshots."""
    return lambda *overrides: compose_config("train", [*DRAWN, *overrides], tmp_path)


class StopAtStep(Callback):
    """Ends a run after a given optimiser step, as a kill would (the run's schedule and
    length stay those of the full run)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def bare_trainer(**settings):
    """A Lightning Trainer on the CPU with nothing of its own -- no logger, checkpoints,
    progress bar or model summary -- for a module or callback tested by itself."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(**{"accelerator": "cpu", **quiet, "enable_model_summary": False, **settings})


def tensorboard_run(run_dir: Path) -> Path:
    """A run's TensorBoard directory, <run dir>/<its overrides> (the run directory itself
    for a run without overrides): one per run."""
    dirs = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    assert len(dirs) == 1, dirs
    return dirs.pop()


PRESTARTED = Server({**os.environ, "OMP_NUM_THREADS": "1"})


def run_cli(
    *args: str, env: dict | None = None, timeout: int = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """``python <script> <args...>`` from the repository root, one thread (two processes
    share the machine's cores in some tests), its output captured as text. A process
    forked with the imports done (tests/prestarted.py), or ``fresh``, a Python of its own."""
    proc = PRESTARTED.popen(list(args), ROOT, {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, fresh)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess([sys.executable, *args], proc.returncode, stdout, stderr)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` (e.g. "600k") mounted at ``path``: a disk that fills up, or one
    that cannot be written (``read_only``). Needs root, as the project's machines and CI run."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the project's machines and CI run as root)")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    assert mounted.returncode == 0, f"these tests mount a small tmpfs (as root): {mounted.stderr.strip()}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class SleepAt(Callback):
    """Touches ``marker`` and sleeps once the run reaches batch ``batch`` of ``stage``
    ("train", "validation" or "test", after the sanity check): a window to interrupt a real
    process there."""

    def __init__(self, stage: str, marker: str, batch: int = 0, seconds: float = 60.0):
        self.stage, self.marker, self.batch, self.seconds = stage, marker, batch, seconds

    def _sleep(self, trainer, batch_idx: int) -> None:
        if not trainer.sanity_checking and batch_idx == self.batch and not Path(self.marker).exists():
            Path(self.marker).touch()
            time.sleep(self.seconds)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stage == "train":
            self._sleep(trainer, batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "test":
            self._sleep(trainer, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "validation":
            self._sleep(trainer, batch_idx)


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Until ``path`` exists (or the process ends, or the time is up: a failure)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended ({proc.returncode}) before {path} appeared: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.1)


class SaveWeightsAtStart(Callback):
    """Saves the network's state_dict as training starts (``+callbacks.x._target_=conftest.SaveWeightsAtStart
    +callbacks.x.path=FILE``): what a run began from."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), self.path)


def pytest_configure(config) -> None:
    # With pytest-xdist's two workers (make test) each takes one core: torch's default of a
    # thread per core, twice over, is many times slower than one thread each. Subprocesses
    # started by the tests inherit the setting.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


class Poison(Callback):
    """Turns a weight into NaN in the step before optimiser step ``step``: the loss of
    ``step`` is the first to read it (one mini-batch per Lightning step or many)."""

    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step - 1:
            with torch.no_grad():
                pl_module.net.layers[0].weight[0, 0] = float("nan")


class RaiseInTraining(Callback):
    """Raises a KeyError in the first training step: a bug, which must keep its traceback
    (``really=false``: a run that goes on, for a sweep over both)."""

    def __init__(self, really: bool = True):
        self.really = really

    def on_train_batch_start(self, *args) -> None:
        if self.really:
            raise KeyError("a deliberate bug")


def start_train(*args: str, env: dict | None = None) -> subprocess.Popen | Prestarted:
    """``python train.py ARGS`` in the background (stderr captured; tests/ on the path, so
    that ``+callbacks.x._target_=conftest.SleepAt`` works), one thread; ``env`` on top."""
    # (PYTHONFAULTHANDLER: a SIGABRT makes it print every thread's stack, for a run that hangs)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "tests"),
        "PYTHONFAULTHANDLER": "1",
        **(env or {}),
    }
    return PRESTARTED.popen(["train.py", *args], ROOT, env, stdout=subprocess.DEVNULL)


def signal_when(ready: Path, *args: str, sig: int = signal.SIGINT, settle: float = 0.0) -> tuple[int, str]:
    """Run ``python train.py ARGS``; once ``ready`` exists (and ``settle`` seconds later),
    send it ``sig``. Its exit status and stderr; a run that does not exit within two
    minutes fails the test with its threads' stacks."""
    proc = start_train(*args)
    try:
        wait_for(ready, proc)
        time.sleep(settle)
        proc.send_signal(sig)
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # where it hangs: faulthandler prints each thread's stack
            try:
                _, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            pytest.fail(f"no exit within 120 s of {signal.Signals(sig).name}:\n{stderr[-8000:]}")
    finally:
        proc.kill()
    return proc.returncode, stderr


def run_printed(command: str, *extra: str) -> subprocess.CompletedProcess:
    """A command line the program printed for its user (``python train.py ...``), pasted
    into a shell as printed, with ``extra`` arguments appended."""
    line = " ".join([command.replace("python ", f"{sys.executable} ", 1), *extra])
    return subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- datasets on disk


def digits(n, seed=0):
    """n random 28x28 uint8 images with labels 0, 1, ..., 9, 0, 1, ..."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return images, labels


def write_raw_dataset(root, folder="MNIST", n_train=200, n_test=50, splits=("train", "test")):
    """Files laid out as torchvision leaves them: <root>/<folder>/raw/*-ubyte.gz."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        if split in splits:
            images, labels = digits(n, seed=len(split))
            write_idx(raw / f"{FILES[split][0]}.gz", images)
            write_idx(raw / f"{FILES[split][1]}.gz", labels)
    return raw


def float64_mlp(sizes, activation: str, output_activation: str, generator: torch.Generator):
    """A small MLP in float64 for the math tests: weight and bias of each layer in turn
    (weights ~ N(0, 1/n_in), biases ~ N(0, 0.01)) drawn from ``generator``, and its
    activations (``activation`` for the hidden layers)."""
    params = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        params += [
            torch.randn(n_out, n_in, generator=generator, dtype=torch.float64) / n_in**0.5,
            0.1 * torch.randn(n_out, generator=generator, dtype=torch.float64),
        ]
    return tuple(params), (activation,) * (len(sizes) - 2) + (output_activation,)


# --------------------------------------------------------------------------- the checkout stays clean


def _outputs_now() -> set[Path]:
    outputs = ROOT / "outputs"
    return set(outputs.rglob("*")) if outputs.is_dir() else set()


def pytest_sessionstart(session) -> None:
    if not hasattr(session.config, "workerinput"):  # (the controller, not an xdist worker)
        session.config.stash[_OUTPUTS_BEFORE] = _outputs_now()


def pytest_sessionfinish(session, exitstatus) -> None:
    """The suite writes its runs under pytest's temporary directories: a run, an empty
    directory or a benchmark report left in the checkout's outputs/ fails it. (And this
    worker's prestarted server ends.)"""
    PRESTARTED.close()
    before = session.config.stash.get(_OUTPUTS_BEFORE, None)
    if before is None:
        return
    left = sorted(str(p.relative_to(ROOT)) for p in _outputs_now() - before)
    if left:
        session.config.get_terminal_writer().line(
            f"FAILED: the tests left {len(left)} path(s) in outputs/: {', '.join(left[:10])}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_OUTPUTS_BEFORE = pytest.StashKey[set]()


def unknown_override_message(argv: list[str], name: str = "train") -> str | None:
    """What train.py (``name="eval"``: eval.py) says of a key in ``argv`` that is not in the
    config; None when every key is there, or Hydra refuses the overrides for another reason.
    A sweep (``-m a=1,2``) is composed with the first value of each list, as its jobs are."""
    from handprop.compose import bare_config  # noqa: PLC0415
    from handprop.errors import ConfigError  # noqa: PLC0415
    from handprop.gate.keys import typed_overrides  # noqa: PLC0415

    try:
        bare_config(list(typed_overrides(argv).values()), name)
    except ConfigError as e:
        return str(e)
    except Exception:  # noqa: BLE001 -- Hydra's to report, in its own words
        return None
    return None
