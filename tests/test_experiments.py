"""The classic recipes: each experiment config is its source's recipe, runs end to end, and
one of them guards the quality of the whole pipeline."""

import pytest
from test_data import write_raw_dataset

from handprop.train import train

from conftest import CONF, FAST, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# What each source prescribes (see the citation at the top of each file).
RECIPES = {
    "3b1b": dict(
        hidden=[16, 16],
        activation="sigmoid",
        output_activation="sigmoid",
        loss="quadratic",
        init="normal",
        normalize=False,
        optimizer="SGD",
        lr=3.0,
        batch_size=10,
        max_epochs=30,
    ),
    "nielsen_ch1": dict(
        hidden=[30],
        activation="sigmoid",
        output_activation="sigmoid",
        loss="quadratic",
        init="normal",
        normalize=False,
        optimizer="SGD",
        lr=3.0,
        batch_size=10,
        max_epochs=30,
        l2=0.0,
    ),
    "nielsen_ch1_100": dict(
        hidden=[100], activation="sigmoid", loss="quadratic", init="normal", lr=3.0, batch_size=10, max_epochs=30
    ),
    "nielsen_ch3": dict(
        hidden=[100],
        activation="sigmoid",
        output_activation="identity",
        loss="binary_cross_entropy",
        init="normal_scaled",
        normalize=False,
        optimizer="SGD",
        lr=0.5,
        batch_size=10,
        max_epochs=30,
        l2=5.0,
        weight_decay=0.0,
    ),
    "lecun_300": dict(hidden=[300], activation="scaled_tanh", loss="quadratic", init="lecun_uniform", max_epochs=20),
    "lecun_1000": dict(hidden=[1000], activation="scaled_tanh", loss="quadratic", init="lecun_uniform", max_epochs=20),
    "lecun_500_150": dict(
        hidden=[500, 150], activation="scaled_tanh", loss="quadratic", init="lecun_uniform", max_epochs=20
    ),
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_each_experiment_is_its_sources_recipe(tmp_path, experiment):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    got = {
        **cfg.model,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[1],
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.get("weight_decay", 0.0),
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
    }
    assert {k: got[k] for k in RECIPES[experiment]} == RECIPES[experiment]
    # no regularisation the source does not have, no augmentation
    assert cfg.model.dropout == 0 and cfg.model.label_smoothing == 0 and not cfg.data.augment
    source = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert source.startswith("# @package _global_\n#") and (
        "Nielsen" in source or "LeCun" in source or "3Blue1Brown" in source
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_end_to_end(tmp_path, experiment):
    overrides = [
        *FAST,
        f"experiment={experiment}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "callbacks.pictures=null",
    ]
    if experiment.startswith("fashion"):  # a small stand-in for the full dataset, in its layout
        write_raw_dataset(tmp_path / "data", "FashionMNIST", n_train=1100, n_test=50)
        overrides += [f"data.data_dir={tmp_path / 'data'}", "data.val_size=50"]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["trainer/global_step"] == 3 and 0 <= metrics["test/acc"] <= 1


@pytest.mark.slow
def test_quality_guard_nielsens_first_network_learns_digits(tmp_path):
    """Nielsen's chapter-1 network for 4 of its 30 epochs on the embedded sample. Measured:
    68.8% (seed 0; seeds 1, 2, 42: 66.8%, 85.4%, 85.0%); 30 epochs reach 87-89%. A broken
    backward pass or data path lands near chance (10%), far below the floor."""
    metrics = train(
        compose_config(
            "train",
            [
                "experiment=nielsen_ch1",
                "seed=0",
                "trainer.max_epochs=4",
                "callbacks.progress_bar=null",
                "trainer.enable_progress_bar=false",
                "callbacks.pictures=null",
                "trainer.accelerator=cpu",
            ],
            tmp_path,
        )
    )
    assert metrics["test/acc"] > 0.55
