"""The config gate's rules of a training run, on composed configs (nothing trains): chunks,
the schedule's length, l2, and Lightning's automatic-optimisation settings."""

import pytest
import torch

from handprop.build import build_data_and_model
from handprop.gate import MAX_CHUNK, plan, planned_steps, train_size

from conftest import compose_config


def _plan(tmp_path, *overrides):
    return plan(compose_config("train", list(overrides), tmp_path))


@pytest.mark.parametrize(
    "overrides, chunk",
    [
        ([], 29),  # 784-512-256-10 at batch 128: about 2e9 multiply-adds a Lightning batch
        (["experiment=nielsen_ch1"], MAX_CHUNK),  # 784-30-10 at batch 10: capped
        (["model.chunk=8"], 8),
        (["trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp"], 58),  # half the batch each
    ],
)
def test_model_chunk_null_chooses_from_the_arithmetic_of_a_step(tmp_path, overrides, chunk):
    result = _plan(tmp_path, *overrides)
    assert result.problems == [] and result.chunk == chunk


@pytest.mark.parametrize(
    "setting, reason",
    [
        ("trainer.limit_train_batches=4", "trainer.limit_train_batches"),
        ("trainer.limit_train_batches=0.5", "trainer.limit_train_batches"),
        ("trainer.overfit_batches=2", "trainer.overfit_batches"),
        ("trainer.fast_dev_run=true", "trainer.fast_dev_run"),
        ("+trainer.val_check_interval=0.5", "trainer.val_check_interval"),
        ("+trainer.val_check_interval=10", "trainer.val_check_interval"),
        ("+callbacks.model_checkpoint.every_n_train_steps=100", "a checkpoint every n training steps"),
        ("data.loader=dataloader", "data.loader=dataloader"),
    ],
)
def test_what_counts_lightnings_batches_runs_one_mini_batch_each_or_is_refused(tmp_path, setting, reason):
    chosen = _plan(tmp_path, setting)
    assert chosen.problems == [] and chosen.chunk == 1 and chosen.why == f"one per Lightning step with {reason}"
    refused = _plan(tmp_path / "refused", setting, "model.chunk=8")
    assert refused.problems == [
        f"model.chunk=8: needs one mini-batch per step with {reason}: set model.chunk=1 (or null, which chooses)"
    ]


def test_the_whole_epoch_is_no_limit(tmp_path):
    assert _plan(tmp_path, "trainer.limit_train_batches=1.0").chunk == 29


@pytest.mark.parametrize(
    "overrides, steps",
    [
        (["trainer.max_epochs=3"], 3 * 32),  # 4,000 digits at batch 128: 32 steps an epoch
        (["trainer.max_epochs=3", "trainer.max_steps=50"], 50),
        (["trainer.max_epochs=-1", "trainer.max_steps=7"], 7),
        (["trainer.max_epochs=2", "trainer.limit_train_batches=4"], 8),
        (["trainer.max_epochs=2", "trainer.limit_train_batches=0.5"], 32),
        (["trainer.max_epochs=2", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp"], 64),
        (["trainer.max_epochs=1", "data.loader=dataloader", "data.batch_size=1000"], 4),
    ],
)
def test_the_runs_length_is_the_one_lightning_steps_through(tmp_path, overrides, steps):
    cfg = compose_config("train", overrides, tmp_path)
    assert train_size(cfg.data) == 4000 and planned_steps(cfg, 4000) == steps


def test_a_schedule_shorter_than_the_run_or_one_that_cannot_warm_up_is_refused(tmp_path):
    short = _plan(tmp_path, "trainer.max_epochs=2", "scheduler.total_steps=40")
    assert short.problems == [
        "scheduler.total_steps=40: the learning-rate schedule ends after 40 steps but this run asks for 64. Leave "
        "the schedule's length null (the run's own length), or set it to at least that."
    ]
    cold = _plan(tmp_path / "cold", "trainer.max_steps=5")
    assert "its warm-up would end on its first step" in cold.problems[0]
    assert _plan(tmp_path / "fine", "trainer.max_steps=6").problems == []


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["model.l2=5.0"], "model.l2=5.0: is an L2 term of the cost, which AdamW's decoupled weight decay is not"),
        (
            ["model.l2=5.0", "optimizer=sgd", "optimizer.weight_decay=0.1"],
            "model.l2=5.0: adds to optimizer.weight_decay",
        ),
        (["trainer.gradient_clip_val=0.5"], "set model.gradient_clip_val=0.5 instead"),
        (["trainer.accumulate_grad_batches=2"], "a mini-batch 2 times as large computes the same gradient"),
    ],
)
def test_rules_across_groups_name_the_setting_that_works(tmp_path, overrides, problem):
    problems = _plan(tmp_path, *overrides).problems
    assert len(problems) == 1 and problem in problems[0]


def test_a_run_resumed_inside_an_epoch_keeps_its_checkpoints_chunk(tmp_path):
    """The gate reads the checkpoint's loader: stopped inside an epoch in chunks of 8, the
    resume goes on in 8 (null), or is refused (another size asked for)."""
    ckpt = tmp_path / "inside.ckpt"
    _, model = build_data_and_model(compose_config("train", ["model.chunk=8"], tmp_path / "run"))
    loader = {"epoch": 1, "consumed": 13, "seed": 42, "size": 4000, "chunk": 8, "chunks_done": 1}

    def save():
        contents = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
        torch.save({**contents, "DigitsDataModule": {"train_loader": loader}}, ckpt)

    save()
    resumed = _plan(tmp_path, f"ckpt_path='{ckpt}'")
    assert resumed.problems == [] and resumed.chunk == 8 and resumed.why == "as the checkpoint's epoch was"
    refused = _plan(tmp_path, f"ckpt_path='{ckpt}'", "model.chunk=1")
    assert "the checkpoint stopped inside an epoch trained 8 optimiser step(s)" in refused.problems[0]
    loader["consumed"] = 0  # at an epoch's start: any size goes
    save()
    assert _plan(tmp_path, f"ckpt_path='{ckpt}'", "model.chunk=1").chunk == 1


def test_an_evaluation_config_has_no_training_rules(tmp_path):
    assert plan(compose_config("eval", ["ckpt_path=x.ckpt"], tmp_path)).problems == []


def test_a_checkpoint_of_an_earlier_handprop_that_lightning_counted_apart_is_not_resumed(tmp_path):
    """An earlier handprop trained one mini-batch per Lightning batch on Lightning's automatic
    optimisation, whose step count a resume now would not find: refused, init_from named."""
    ckpt = tmp_path / "old.ckpt"
    _, model = build_data_and_model(compose_config("train", [], tmp_path / "run"))
    old = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 64}
    old["DigitsDataModule"] = {"train_loader": {"epoch": 2, "consumed": 0, "seed": 42, "size": 4000, "chunk": 1}}
    torch.save(old, ckpt)
    problems = _plan(tmp_path, f"ckpt_path='{ckpt}'").problems
    assert len(problems) == 1 and problems[0].startswith(f"ckpt_path={ckpt}: written by an earlier handprop")
    assert problems[0].endswith(f"init_from={ckpt}")
    old["DigitsDataModule"]["train_loader"]["chunk"] = 8  # its chunked runs counted as today
    torch.save(old, ckpt)
    assert _plan(tmp_path, f"ckpt_path='{ckpt}'").problems == []
    torch.save({**old, "optimisation": "manual"}, ckpt)  # what handprop writes today
    assert _plan(tmp_path, f"ckpt_path='{ckpt}'").problems == []
