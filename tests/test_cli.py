"""End to end: train.py and eval.py as a user runs them, in subprocesses."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import CONF, DRAWN, ROOT, run_cli, write_raw_dataset


def run(script, *overrides, env=None):
    return run_cli(script, *overrides, env=env, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = run("train.py", *DRAWN, "model.hidden=[64,32]", "optimizer.lr=0.01", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_train_cli_leaves_the_run_directory(trained_run):
    config = yaml.safe_load((trained_run / ".hydra" / "config.yaml").read_text())
    assert config["model"]["hidden"] == [64, 32] and config["optimizer"]["lr"] == 0.01
    ckpts = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("epoch") for n in ckpts), ckpts
    # the TensorBoard run is named after the command line's overrides, inside the run directory:
    # TensorBoard shows it as <date>/<time>/<overrides>
    (run,) = {p.parent for p in trained_run.rglob("events.out.tfevents.*")}
    assert run.parent == trained_run and "model.hidden=[64,32]" in run.name and "optimizer.lr=0.01" in run.name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("train/loss_epoch", "train/acc", "val/acc", "val/acc_best", "test/acc", "test/loss", "time/fit_s"):
        assert isinstance(metrics[key], float), key
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["net.layers.0.weight"].shape == (64, 784)


def test_eval_cli_reproduces_the_test_accuracy(trained_run, tmp_path):
    best = next((trained_run / "checkpoints").glob("epoch*.ckpt"))
    proc = run("eval.py", f"ckpt_path={best}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads((trained_run / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["test/acc"] == trained["test/acc"]
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)


def test_eval_cli_on_a_full_dataset_needs_only_its_test_files(trained_run, tmp_path):
    write_raw_dataset(tmp_path / "data", "MNIST", n_test=30, splits=("test",))
    proc = run(
        "eval.py",
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        "data=mnist",
        f"data.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 <= json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] <= 1


# Refused values, each named; the gate names every bad value at once, so one run shows them all
REFUSED = [
    ("model.activation=softplus", "model.activation='softplus'"),
    ("model.hidden=[512,0]", "model.hidden=[512, 0]"),
    ("optimizer.lr=-0.01", "optimizer.lr=-0.01"),
    ("trainer.precision=17", "trainer.precision=17: must be one of 64, 32, 16"),  # a type from Trainer's signature
    ("+model.hiden=[3]", "model.hiden: unknown key. Did you mean model.hidden?"),  # added with '+'
]


@pytest.mark.parametrize(
    "overrides,named",
    [
        ([override for override, _ in REFUSED], [named for _, named in REFUSED]),
        (["data=mnist", "data.data_dir=/no/such/dir"], ["data.data_dir='/no/such/dir'"]),  # (once the values are good)
    ],
)
def test_bad_overrides_stop_before_anything_is_written(tmp_path, overrides, named):
    """The config gate runs before Hydra makes the run directory: a refused run leaves none
    (no outputs/<date>/<time>/ with a .hydra/, a lock and a log)."""
    outputs = tmp_path / "outputs"
    proc = run("train.py", *overrides, env={**os.environ, "HANDPROP_OUTPUTS": str(outputs)})
    assert proc.returncode == 2
    assert "error: bad config" in proc.stderr and all(n in proc.stderr for n in named), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not outputs.exists() or not any(outputs.iterdir()), sorted(outputs.rglob("*"))


@pytest.mark.parametrize(
    "script,override,message",
    [
        (
            "train.py",
            "model.hiden=[3]",
            "error: model.hiden: unknown key. Did you mean model.hidden? model has: hidden,",
        ),
        (
            "train.py",
            "optimizer.amsgrad=true",
            "error: optimizer.amsgrad: not in the config, but AdamW takes it: "
            "add it with a '+', +optimizer.amsgrad=true",
        ),
        ("eval.py", "data.batchsize=10", "error: data.batchsize: unknown key. Did you mean data.batch_size?"),
    ],
)
def test_keys_not_in_the_config_are_named_before_hydra_starts(tmp_path, script, override, message):
    """Hydra's own answer ("To append to your config use +model.hiden=[3]") only moves the
    failure; the entry points answer first, and no run directory is made."""
    run_dir = tmp_path / "run"
    proc = run(script, "ckpt_path=x.ckpt" if script == "eval.py" else "seed=1", override, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr and "To append" not in proc.stderr
    assert not run_dir.exists()


def test_a_sweep_with_an_unknown_key_is_refused_before_any_job(tmp_path):
    proc = run("train.py", "-m", "optimizer.lr=0.01,0.02", "model.hiden=[3]", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2 and "model.hiden: unknown key" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_eval_without_a_checkpoint_says_how(tmp_path):
    proc = run("eval.py", f"ckpt_path={tmp_path}/missing.ckpt", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "missing.ckpt: no such checkpoint file" in proc.stderr


def test_a_bug_keeps_its_traceback_and_a_users_mistake_is_one_line(tmp_path):
    """Entry points catch the HandpropError family only: a KeyError raised inside training
    is a bug and shows where it happened; a bad value is one line."""
    quick = [
        "model.hidden=[16]",
        "trainer.max_epochs=1",
        "callbacks.pictures=null",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
    ]
    bug = run_cli(
        "train.py",
        *quick,
        "+callbacks.boom._target_=conftest.RaiseInTraining",
        f"hydra.run.dir={tmp_path}/a",
        env={"PYTHONPATH": str(ROOT / "tests")},
    )
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "KeyError: 'a deliberate bug'" in bug.stderr
    assert not any(line.startswith("error:") for line in bug.stderr.splitlines())
    mistake = run_cli("train.py", *quick, "model.dropout=1.5", f"hydra.run.dir={tmp_path}/b")
    assert mistake.returncode == 2 and "Traceback" not in mistake.stderr
    assert "error: bad config:\n  model.dropout=1.5: must be a probability in [0, 1)" in mistake.stderr


# --------------------------------------------------------------------------- --help


def options(group: str) -> list[str]:
    """A config group's options, as Hydra lists them: conf/<group>/*.yaml, sorted."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_is_handprops_own_text(tmp_path, flag):
    """Hydra's help mechanism with handprop's words (conf/hydra/default.yaml, hydra.help):
    what it does, every config group with its options, examples, where runs go -- and not
    the 140-line config dump of Hydra's stock help. Nothing is run, no directory made."""
    proc = run("train.py", flag, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("handprop: trains a multilayer perceptron on handwritten digits"), out[:500]
    assert "backward pass written by hand" in out and "PyTorch Lightning" in out and "Hydra" in out
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    assert {"data", "experiment", "model", "optimizer", "trainer"} <= set(groups)
    for group in groups:
        assert f"\n{group}: {', '.join(options(group))}\n" in out, group
    assert "3b1b" in options("experiment")
    for example in (
        "python train.py model.hidden=[512,256] optimizer.lr=0.01 trainer.max_epochs=30",
        "python train.py experiment=3b1b",
        "python train.py -m optimizer.lr=0.001,0.003,0.01",
        "python train.py ckpt_path=outputs/<run>/checkpoints/last.ckpt",
    ):
        assert f"\n  {example}" in out, example
    for where in ("outputs/<date>/<time>/", "train.log", "metrics.json", "checkpoints/", "pictures/"):
        assert where in out, where
    assert "python train.py --cfg job" in out and "--hydra-help" in out
    assert "_target_" not in out and "seed: 42" not in out and "== Config ==" not in out  # no config dump
    assert len(out.splitlines()) <= 45
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_train_help_loads_neither_torch_nor_lightning():
    """--help answers in well under a second because torch and Lightning load only when a
    run starts (handprop.train is imported inside main(), the gate imports them
    inside its checks): the import trace of a --help names neither."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "train.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "handprop.gate.keys" in imported and "hydra" in imported  # the trace is read right
    assert not {"torch", "lightning"} & imported, "--help imports torch or Lightning: a module-level import crept in"


def test_eval_help_is_about_evaluation(tmp_path):
    """eval.py shares conf/hydra/default.yaml; conf/eval.yaml gives it its own text: its
    settings (ckpt_path, data), its examples, its directory -- not train.py's groups."""
    proc = run("eval.py", "--help", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("handprop's evaluation: tests a trained checkpoint"), out[:500]
    assert "Usage: python eval.py ckpt_path=PATH" in out
    assert "\n  python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt\n" in out
    data_line = next(line for line in out.splitlines() if line.strip().startswith("data=NAME"))
    assert all(option in data_line for option in options("data")), data_line  # every dataset named
    assert "outputs/eval/<date>/<time>/" in out and "metrics.json" in out and "python eval.py --cfg job" in out
    assert "experiment" not in out and "python train.py experiment" not in out  # not train.py's text
    assert "_target_" not in out and "== Config ==" not in out
    assert len(out.splitlines()) <= 45
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
