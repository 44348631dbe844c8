"""handprop.compose: the config of `python train.py OVERRIDES` outside the command line
(a notebook, a script), complete enough to run, and refused as the command line refuses it."""

import logging
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import handprop
from handprop import compose
from handprop.compose import bare_config
from handprop.errors import ConfigError
from handprop.train import train

from conftest import FAST, ROOT, run_cli, unknown_override_message


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
        "run_dir": str(tmp_path / "run"),  # (the name a new directory is claimed under: given)
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
    expected = unknown_override_message(["model.hiden=[64]"])
    assert expected.startswith("model.hiden: unknown key. Did you mean model.hidden?")
    with pytest.raises(ConfigError) as e:
        compose(["model.hiden=[64]"], tmp_path)
    assert str(e.value) == expected
    proc = run_cli("train.py", "model.hiden=[64]")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {expected}"


def test_a_bad_value_is_refused_by_train_as_on_the_command_line(tmp_path, monkeypatch):
    """...and before the composed run's directory is claimed: a refused run leaves none."""
    monkeypatch.setenv("HANDPROP_OUTPUTS", str(tmp_path / "outputs"))
    cfg = compose([*FAST, "model.dropout=2"])
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert "model.dropout=2: " in str(e.value)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
    second = compose([*FAST])  # two configs composed in the same second: a directory each
    assert Path(second.paths.output_dir).is_dir() and Path(cfg.paths.output_dir) != Path(second.paths.output_dir)
    proc = run_cli("train.py", *FAST, "model.dropout=2", f"hydra.run.dir={tmp_path / 'cli'}")
    assert proc.returncode != 0 and str(e.value).splitlines()[1].strip() in proc.stderr + proc.stdout


def test_a_composed_config_trains_and_keeps_its_record_as_train_py_does(tmp_path):
    overrides = [*FAST, "model.hidden=[16]"]
    metrics = train(compose(overrides, tmp_path))
    assert 0 <= metrics["test/acc"] <= 1 and (tmp_path / "metrics.json").is_file()
    assert OmegaConf.load(tmp_path / ".hydra" / "overrides.yaml") == overrides
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").model.hidden == [16]
    log = (tmp_path / "train.log").read_text()
    assert f"train.py {' '.join(overrides)}" in log and "epoch 2/2" in log and "no overrides" not in log
    files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    assert str(tmp_path / "train.log") not in files  # detached when the run ends
