"""Early stopping (Nielsen's no-improvement-in-n): on a scripted validation record, in a
real run, and refused beside a schedule planned for a fixed length."""

import json
from types import SimpleNamespace

import pytest
import torch

from handprop.callbacks import EarlyStopping
from handprop.compose import bare_config
from handprop.errors import ConfigError
from handprop.gate import problems as config_problems
from handprop.train import train

from conftest import DRAWN, FAST, compose_config, run_cli


def _trainer():
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    return SimpleNamespace(
        callback_metrics={},
        fast_dev_run=False,
        should_stop=False,
        current_epoch=0,
        is_global_zero=True,
        strategy=strategy,
        state=SimpleNamespace(fn="fit"),
        sanity_checking=False,
    )


def _replay(callback, record):
    """Validation accuracies, one per epoch, until the callback stops the run: the 1-based
    epoch it stopped after (None: it never did)."""
    trainer = _trainer()
    for epoch, acc in enumerate(record):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/acc": torch.tensor(acc)}
        callback.on_validation_end(trainer, None)  # where Lightning calls it, after validation
        if trainer.should_stop:
            return epoch + 1
    return None


@pytest.mark.parametrize(
    "patience,record,stopped,best",
    [
        # improvements at epochs 1, 2 and 5; then 6, 7, 8 without: stops after 8
        (3, [0.5, 0.6, 0.6, 0.55, 0.61, 0.60, 0.61, 0.60, 0.9], 8, 5),
        (1, [0.5, 0.6, 0.6, 0.7], 3, 2),  # a tie is no improvement
        (5, [0.5, 0.6, 0.6, 0.55, 0.61, 0.60, 0.61, 0.60], None, 5),  # not patience epochs yet
    ],
)
def test_it_stops_after_patience_epochs_without_improvement(patience, record, stopped, best):
    callback = EarlyStopping(patience=patience)
    assert _replay(callback, record) == stopped
    assert callback.best_epoch == best
    if stopped:
        assert callback.stopped_epoch + 1 == stopped
        assert callback.why(stopped) == (
            f"stopped after epoch {stopped}: val/acc has not improved for {patience} validated epochs "
            f"(patience {patience}); best {100 * record[best - 1]:.2f}% at epoch {best}"
        )


def test_min_delta_and_a_loss():
    callback = EarlyStopping(patience=2, min_delta=0.05)
    assert _replay(callback, [0.5, 0.52, 0.54, 0.6]) == 3  # +0.02 and +0.04: no improvement
    loss = EarlyStopping(patience=2, monitor="val/loss", mode="min")
    trainer = _trainer()
    for epoch, value in enumerate([1.0, 0.9, 0.95, 0.91]):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/loss": torch.tensor(value)}
        loss.on_validation_end(trainer, None)
    assert trainer.should_stop and loss.best_epoch == 2


def test_off_by_default_it_never_stops_and_saves_nothing():
    off = EarlyStopping()
    assert not off.enabled and _replay(off, [0.9] + [0.1] * 50) is None
    assert off.state_dict() == {}  # a resume that turns it on starts counting then


def test_a_resume_keeps_counting_with_its_own_patience():
    callback = EarlyStopping(patience=4)
    _replay(callback, [0.5, 0.7, 0.6])
    again = EarlyStopping(patience=2)
    again.load_state_dict(callback.state_dict())
    assert (again.wait_count, again.best_epoch, float(again.best_score)) == (1, 2, pytest.approx(0.7))
    assert again.patience == 2  # this run's, not the checkpoint's 4
    stopped = EarlyStopping(patience=1)
    _replay(stopped, [0.5, 0.4])
    assert stopped.stopped_epoch == 1
    resumed = EarlyStopping(patience=5)
    resumed.load_state_dict(stopped.state_dict())
    assert resumed.stopped_epoch == 0 and resumed.numbers()["early_stopping/stopped_epoch"] == 1  # not stopped yet


def test_a_real_resume_turns_it_on_and_counts_from_the_checkpoint(train_cfg, tmp_path):
    """Trained 2 epochs without early stopping, resumed with patience 2: the resumed run
    counts from its first epoch (3), the best, and stops after epoch 5 of 10."""
    common = ["scheduler=none", "optimizer.lr=1e-30", "model.hidden=[16]", "callbacks.pictures=null"]
    train(train_cfg(*common, "test=false"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    metrics = train(
        train_cfg(*common, "trainer.max_epochs=10", "callbacks.early_stopping.patience=2", f"ckpt_path={last}")
    )
    assert metrics["early_stopping/stopped_epoch"] == 5 and metrics["early_stopping/best_epoch"] == 3


@pytest.mark.parametrize("patience", [0, -3, 2.5, "ten"])
def test_a_bad_patience_is_named(train_cfg, patience):
    problems = config_problems(train_cfg("scheduler=none", f"callbacks.early_stopping.patience={patience}"))
    assert any(p.startswith(f"callbacks.early_stopping.patience={patience!r}") for p in problems), problems


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_schedule_planned_for_the_whole_run_is_refused_with_the_reason(train_cfg, scheduler):
    problems = config_problems(train_cfg(f"scheduler={scheduler}", "callbacks.early_stopping.patience=10"))
    assert problems == [
        f"callbacks.early_stopping.patience=10: scheduler={scheduler} shapes the learning rate over all of "
        "trainer.max_epochs, and a run stopped early ends before the rate comes down; use scheduler=none "
        "(a constant rate, as in Nielsen's chapter 3), or callbacks.early_stopping.patience=null"
    ]
    assert config_problems(train_cfg(f"scheduler={scheduler}")) == []  # off: no conflict
    assert config_problems(train_cfg("scheduler=none", "callbacks.early_stopping.patience=10")) == []
    with pytest.raises(ConfigError, match="callbacks.early_stopping.patience=10: scheduler="):
        train(train_cfg(f"scheduler={scheduler}", "callbacks.early_stopping.patience=10"))


def test_a_real_run_stops_and_says_when_and_why(tmp_path):
    """A learning rate too small to change any weight: val/acc is the same every epoch, so
    epoch 1 is the best and patience 2 ends the run after epoch 3 of 10."""
    cfg = compose_config(
        "train",
        [
            *DRAWN,
            "scheduler=none",
            "optimizer.lr=1e-30",
            "model.hidden=[16]",
            "trainer.max_epochs=10",
            "callbacks.early_stopping.patience=2",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert metrics["early_stopping/stopped_epoch"] == 3 and metrics["early_stopping/best_epoch"] == 1
    assert metrics["early_stopping/patience"] == 2
    assert metrics["trainer/global_step"] == 3 * 4  # FAST: 4 batches an epoch
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["early_stopping/stopped_epoch"] == 3
    # the pictures of the last validated epoch are drawn although it was no picture epoch
    assert {p.name for p in (tmp_path / "pictures").iterdir()} >= {"confusion_matrix.png", "mistakes.png"}


def test_the_run_log_and_summary_say_it(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *FAST,
        "scheduler=none",
        "optimizer.lr=1e-30",
        "model.hidden=[16]",
        "trainer.max_epochs=10",
        "callbacks.early_stopping.patience=2",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = "early stopping: stopped after epoch 3: val/acc has not improved for 2 validated epochs (patience 2); best "
    log = (out / "train.log").read_text()
    assert said in log and said in proc.stdout
    assert "stopped early    after epoch 3: no improvement in 2 validated epochs" in proc.stdout
    assert log.index("epoch 3/10") < log.index(said)  # after the epoch's own line


def test_nielsen_ch3_early_is_chapter_3_with_the_no_improvement_in_ten_rule(train_cfg):
    cfg, base = train_cfg("experiment=nielsen_ch3_early"), train_cfg("experiment=nielsen_ch3")
    assert cfg.callbacks.early_stopping.patience == 10 and cfg.callbacks.early_stopping.monitor == "val/acc"
    assert not cfg.scheduler and config_problems(cfg) == []  # scheduler=none: a constant rate
    assert cfg.model == base.model and cfg.optimizer == base.optimizer and cfg.data == base.data
    assert bare_config(["experiment=nielsen_ch3_early"]).trainer.max_epochs == 200  # a cap: the rule ends the run
