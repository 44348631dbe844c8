"""Chunked training (model.chunk = K > 1): K optimiser steps per Lightning step is the same
training as one, bitwise -- parameters, optimiser and schedule states, logged steps and
learning rates, the audit's and the guard's steps, resume from inside a chunk."""

import dataclasses
import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handprop import functional as HF
from handprop.callbacks import ProgressBar, progress
from handprop.errors import HandpropError
from handprop.train import train

from conftest import compose_config, tensorboard_run

# 4,000 sample digits at batch 100: 40 mini-batches an epoch, five chunks of 8
SMALL = [
    "model.hidden=[32]",
    "data.batch_size=100",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=3",
    "trainer.deterministic=true",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.pictures=null",
    "test=false",
]
# the default recipe (dropout, augmentation, AdamW, one-cycle, label smoothing), and the
# textbook's (sigmoid, quadratic cost, SGD, here with momentum and Nielsen's L2 term)
RECIPES = {
    "default": [],
    "textbook": [
        "model.activation=sigmoid",
        "model.output_activation=sigmoid",
        "model.loss=quadratic",
        "model.label_smoothing=0",
        "model.dropout=0",
        "optimizer=sgd",
        "optimizer.lr=1.0",
        "optimizer.momentum=0.5",
        "model.l2=2.0",
        "scheduler=none",
        "data.augment=null",
    ],
}


def _run(tmp_path, name, *overrides, callbacks=None):
    cfg = compose_config("train", [*SMALL, *overrides], tmp_path / name)
    with open_dict(cfg):
        cfg.callbacks.update(callbacks or {})
    return train(cfg), tmp_path / name


def _checkpoint(run_dir, name="last"):
    return torch.load(run_dir / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(tensorboard_run(run_dir)), size_guidance={"scalars": 0})
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def _assert_same_training(a: dict, b: dict) -> None:
    """Bitwise the same parameters, optimiser state and schedule."""
    assert a["global_step"] == b["global_step"]
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    states_a, states_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert states_a.keys() == states_b.keys() and states_a
    for pid in states_a:
        for key in states_a[pid]:
            assert torch.equal(torch.as_tensor(states_a[pid][key]), torch.as_tensor(states_b[pid][key])), (pid, key)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_eight_steps_per_lightning_step_train_bitwise_as_one(tmp_path, recipe):
    one, one_dir = _run(tmp_path, "one", *RECIPES[recipe], "model.chunk=1")
    eight, eight_dir = _run(tmp_path, "eight", *RECIPES[recipe], "model.chunk=8")
    a, b = _checkpoint(one_dir), _checkpoint(eight_dir)
    assert a["global_step"] == 80  # 2 epochs of 40 optimiser steps: chunks count every step
    assert b["DigitsDataModule"]["train_loader"]["chunk"] == 8
    _assert_same_training(a, b)
    # what the run logs: the same steps, the same step losses and learning rates, bitwise
    # (float32 both); the epoch means sum in another order
    logged_one, logged_eight = _scalars(one_dir), _scalars(eight_dir)
    assert logged_one.keys() == logged_eight.keys()
    steps = [s for s, _ in logged_one["train/loss_step"]]
    assert steps == list(range(2, 80, 3))  # trainer.log_every_n_steps=3: steps k with (k + 1) % 3 == 0
    for tag in ("train/loss_step", "train/lr"):
        assert logged_one[tag] == logged_eight[tag], tag
    for tag, points in logged_one.items():
        assert [s for s, _ in points] == [s for s, _ in logged_eight[tag]], tag
        if not tag.startswith("wall/"):
            assert [v for _, v in points] == pytest.approx([v for _, v in logged_eight[tag]], rel=1e-5), tag
    assert [s for s, _ in logged_one["val/acc"]] == [39, 79]  # epoch scalars at the epoch's last step
    assert one["train/acc"] == eight["train/acc"] and one["val/acc"] == eight["val/acc"]


class InterruptInStep(Callback):
    """Ctrl-C in the middle of optimiser step ``step``: its forward pass done (its
    augmentation and dropout masks drawn), its backward not yet."""

    def __init__(self, step: int):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_run_interrupted_inside_a_chunk_resumes_bitwise(tmp_path):
    """Step 53 lies inside the second epoch's second chunk (steps 48-55): the resumed run
    takes step 53 again from where it began (the checkpoint holds the random generators of
    the step's start), trains the rest of that chunk, then whole chunks again, and ends
    where the run that was never interrupted ends. It validates where the straight one does."""
    _, straight = _run(tmp_path, "straight", "model.chunk=8")
    stop = {"stop": {"_target_": "test_chunks.InterruptInStep", "step": 53}}
    with pytest.raises(SystemExit):
        _run(tmp_path, "interrupted", "model.chunk=8", callbacks=stop)
    ckpt = tmp_path / "interrupted" / "checkpoints" / "interrupted.ckpt"
    loader = torch.load(ckpt, map_location="cpu", weights_only=True)["DigitsDataModule"]["train_loader"]
    assert (loader["epoch"], loader["consumed"], loader["chunks_done"]) == (1, 13, 1)
    for chunk in ("8", "null"):  # null: the rest of the epoch in the checkpoint's chunks
        _run(tmp_path, f"resumed{chunk}", f"model.chunk={chunk}", f"ckpt_path='{ckpt}'")
        _assert_same_training(_checkpoint(straight), _checkpoint(tmp_path / f"resumed{chunk}"))
        assert [s for s, _ in _scalars(tmp_path / f"resumed{chunk}")["val/acc"]] == [79]
    # Lightning counts an epoch's batches (and validates when the count is full): the unit
    # cannot change inside one
    with pytest.raises(HandpropError, match=r"inside an epoch trained 8 optimiser step\(s\).*model.chunk=8"):
        _run(tmp_path, "unchunked", "model.chunk=1", f"ckpt_path='{ckpt}'")


class SaveAtEnd(Callback):
    """The whole training state where fit stopped, as ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


@pytest.mark.slow
def test_max_steps_stops_inside_a_chunk_and_its_resume_is_the_unchunked_ones(tmp_path):
    """trainer.max_steps=13 ends the run inside the second chunk, on the step it names; a
    run resumed from there with a longer schedule goes on exactly as the unchunked one
    does. (The textbook recipe: a one-cycle schedule would end where the short run ends.)"""
    ends = {}
    for chunk in (1, 8):
        ends[chunk] = tmp_path / f"end{chunk}.ckpt"
        save = {"save": {"_target_": "test_chunks.SaveAtEnd", "path": str(ends[chunk])}}
        _run(
            tmp_path,
            f"short{chunk}",
            *RECIPES["textbook"],
            f"model.chunk={chunk}",
            "trainer.max_steps=13",
            callbacks=save,
        )
        _run(tmp_path, f"resumed{chunk}", *RECIPES["textbook"], f"model.chunk={chunk}", f"ckpt_path='{ends[chunk]}'")
    short_one, short_eight = (torch.load(ends[c], map_location="cpu", weights_only=True) for c in (1, 8))
    assert short_eight["global_step"] == 13
    loader = short_eight["DigitsDataModule"]["train_loader"]
    assert (loader["consumed"], loader["chunks_done"]) == (13, 2)  # all of chunk 0, part of chunk 1
    _assert_same_training(short_one, short_eight)
    _assert_same_training(_checkpoint(tmp_path / "resumed1"), _checkpoint(tmp_path / "resumed8"))


@pytest.mark.parametrize("chunk", [1, 8])
def test_the_numerics_guard_names_the_step_inside_a_chunk(tmp_path, chunk):
    poison = {"poison": {"_target_": "conftest.Poison", "step": 45}}
    with pytest.raises(HandpropError, match=r"^the training loss became NaN or infinite at step 45 \(epoch 1\)"):
        _run(tmp_path, "run", f"model.chunk={chunk}", "callbacks.numerics_guard.every_n_steps=4", callbacks=poison)


@pytest.mark.parametrize("chunk", [1, 8])
def test_the_audit_checks_the_same_steps_and_stops_a_broken_backward_inside_a_chunk(tmp_path, chunk, monkeypatch):
    _, run_dir = _run(tmp_path, "good", f"model.chunk={chunk}", "callbacks.gradient_audit.every_n_steps=7")
    audited = _scalars(run_dir)["vs_autograd/max_rel_err/layer1"]
    assert [s for s, _ in audited] == list(range(0, 80, 7)) and max(v for _, v in audited) < 1e-5
    broken = dataclasses.replace(HF.ACTIVATIONS["relu"], chain=lambda g, a: g)  # relu' forgotten
    monkeypatch.setitem(HF.ACTIVATIONS, "relu", broken)
    with pytest.raises(HandpropError, match=r"gradient audit failed at step 0: .* layer1 \(32x784, activation relu\)"):
        _run(tmp_path, "broken", f"model.chunk={chunk}", "callbacks.gradient_audit.every_n_steps=7")


class BarReading(Callback):
    """What the progress bar shows at the end of the training epoch."""

    read = None

    def on_train_epoch_end(self, trainer, pl_module):
        bar = next(c for c in trainer.callbacks if isinstance(c, ProgressBar)).train_progress_bar
        BarReading.read = (bar.n, bar.total)


@pytest.mark.parametrize(
    "overrides, read",
    [
        (["model.chunk=8"], (40, 40)),  # the epoch's 40 steps, not its 5 chunks
        (["model.chunk=null", "trainer.limit_train_batches=7"], (7, 7)),  # one a batch: Lightning's own count
    ],
)
def test_the_progress_bar_counts_optimiser_steps(tmp_path, monkeypatch, overrides, read):
    monkeypatch.setattr(progress, "on_a_terminal", lambda: True)  # (the bar is drawn on a terminal only)
    seen = {"seen": {"_target_": "test_chunks.BarReading"}}
    cfg = compose_config(
        "train", [o for o in SMALL if "progress_bar" not in o] + [*overrides, "trainer.max_epochs=1"], tmp_path
    )
    with open_dict(cfg):
        cfg.callbacks.update(seen)
    train(cfg)
    assert BarReading.read == read


@pytest.mark.parametrize("chunk", [1, 8])
def test_a_run_without_an_epoch_limit_counts_its_steps(tmp_path, chunk):
    """max_epochs=-1: the run's length is max_steps (a one-cycle schedule fills it in), or
    unknown until a callback stops it."""
    metrics, _ = _run(tmp_path, "steps", f"model.chunk={chunk}", "trainer.max_epochs=-1", "trainer.max_steps=20")
    assert metrics["trainer/global_step"] == 20
    stop = {"stop": {"_target_": "conftest.StopAtStep", "step": 10}}
    metrics, _ = _run(
        tmp_path, "open", *RECIPES["textbook"], f"model.chunk={chunk}", "trainer.max_epochs=-1", callbacks=stop
    )
    assert metrics["trainer/global_step"] == math.ceil(10 / chunk) * chunk  # (it stops after a whole chunk)
