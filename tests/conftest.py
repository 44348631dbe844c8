"""Shared fixtures: Hydra configs composed the way train.py / eval.py compose them."""

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from handprop.bench import compose_recipe

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run that takes seconds: a few batches, two epochs, no progress bar.
FAST = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def compose_config(name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<name>.yaml as Hydra's app would, with the run directory set to output_dir."""
    return compose_recipe(overrides, output_dir, name)


@pytest.fixture
def train_cfg(tmp_path):
    return lambda *overrides: compose_config("train", [*FAST, *overrides], tmp_path)


class StopAtStep(Callback):
    """Ends a run after a given optimiser step, as a kill would (the run's schedule and
    length stay those of the full run)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def tensorboard_run(run_dir: Path) -> Path:
    """A run's TensorBoard directory, <run dir>/tensorboard/<its overrides> (one per run)."""
    dirs = {p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(dirs) == 1, dirs
    return dirs.pop()
