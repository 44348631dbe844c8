"""handprop.compose: the config of `python train.py OVERRIDES` outside the command line
(a notebook, a script), complete enough to run, and refused as the command line refuses it."""

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import handprop
from handprop import compose
from handprop.compose import bare_config
from handprop.config import unknown_override_message
from handprop.errors import ConfigError
from handprop.train import train

from conftest import CONF, FAST, ROOT, run_cli


def test_paths_are_filled_as_a_hydra_run_fills_them(tmp_path, monkeypatch):
    monkeypatch.delenv("HANDPROP_OUTPUTS", raising=False)
    cfg = compose(["seed=3"], output_dir=tmp_path / "run")
    assert handprop.compose is compose  # the public helper, at the package's top level
    paths = OmegaConf.to_container(cfg.paths, resolve=True)  # nothing left that needs Hydra's app
    assert paths == {
        "root_dir": str(ROOT),
        "data_dir": str(ROOT / "data"),
        "log_dir": str(ROOT / "outputs"),
        "output_dir": str(tmp_path / "run"),
    }
    OmegaConf.to_container(cfg, resolve=True)  # every other value resolves too
    assert "hydra" not in cfg


def test_without_a_directory_each_compose_gets_a_new_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDPROP_OUTPUTS", str(tmp_path))
    first, second = compose().paths.output_dir, compose().paths.output_dir
    assert first != second and Path(first).is_dir() and Path(second).is_dir()  # claimed, as train.py does
    assert Path(first).parent.parent == tmp_path and Path(first).parent.name == time.strftime("%Y-%m-%d")
    assert compose(output_dir=tmp_path / "x").paths.log_dir == str(tmp_path)  # python train.py's runs too


def test_overrides_apply_as_on_the_command_line(tmp_path):
    cfg = compose(["experiment=3b1b", "model.hidden=[20,12]", "optimizer.lr=0.5"], tmp_path)
    assert list(cfg.model.hidden) == [20, 12] and cfg.model.activation == "sigmoid" and cfg.optimizer.lr == 0.5
    assert cfg == compose(["experiment=3b1b", "model.hidden=[20,12]", "optimizer.lr=0.5"], tmp_path)
    assert bare_config(["experiment=3b1b"]).model == compose(["experiment=3b1b"], tmp_path).model


def test_a_key_not_in_the_config_is_refused_with_the_command_lines_message(tmp_path):
    expected = unknown_override_message(CONF, "train", ["model.hiden=[64]"])
    assert expected.startswith("model.hiden: unknown key. Did you mean model.hidden?")
    with pytest.raises(ConfigError) as e:
        compose(["model.hiden=[64]"], tmp_path)
    assert str(e.value) == expected
    proc = run_cli("train.py", "model.hiden=[64]")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {expected}"


def test_a_bad_value_is_refused_by_train_as_on_the_command_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        train(compose([*FAST, "model.dropout=2"], tmp_path / "run"))
    assert "model.dropout=2: " in str(e.value)
    proc = run_cli("train.py", *FAST, "model.dropout=2", f"hydra.run.dir={tmp_path / 'cli'}")
    assert proc.returncode != 0 and str(e.value).splitlines()[1].strip() in proc.stderr + proc.stdout


def test_a_composed_config_trains(tmp_path):
    metrics = train(compose([*FAST, "model.hidden=[16]", "callbacks.pictures=null"], tmp_path))
    assert 0 <= metrics["test/acc"] <= 1 and (tmp_path / "metrics.json").is_file()
