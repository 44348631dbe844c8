"""A run whose numbers break stops at once, names the step and the likely cause, keeps its last good checkpoint."""

import pytest
import torch
from omegaconf import open_dict

from handprop.errors import HandpropError
from handprop.train import train

from conftest import FAST, compose_config


def test_a_nan_mid_run_stops_it_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = compose_config("train", [*FAST, "trainer.max_epochs=3", "model.hidden=[16]"], tmp_path)
    with open_dict(cfg):
        cfg.callbacks.poison = {"_target_": "conftest.Poison", "step": 6}  # epoch 1, its third step
    with pytest.raises(HandpropError) as e:
        train(cfg)
    message = str(e.value)
    assert message.startswith("the training loss became NaN or infinite at step 6 (epoch 1)"), message
    assert "Likely cause: a learning rate too high" in message and "optimizer.lr" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"The last good checkpoint is kept: {last}" in message
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()


def test_a_learning_rate_far_too_high_is_named(tmp_path):
    cfg = compose_config(
        "train",
        [
            *FAST,
            "optimizer=sgd",
            "optimizer.lr=1e6",
            "scheduler=none",
            "model.hidden=[16]",
            "callbacks.numerics_guard.every_n_steps=1",
        ],
        tmp_path,
    )
    with pytest.raises(
        HandpropError, match=r"became NaN or infinite at step \d+ \(epoch \d\).*learning rate was 1e\+06"
    ):
        train(cfg)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):  # nothing written from broken weights
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path
