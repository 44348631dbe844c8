"""Sweeps: a grid with -m and an Optuna search, each one multirun directory whose runs
compare in TensorBoard's HParams tab, with a summary of the best run."""

import json
import subprocess
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handprop.sweep import markdown, summarize

from conftest import FAST, ROOT, tensorboard_run

SMALL = [*FAST, "model.hidden=[32]", "callbacks.pictures=null"]


def _sweep(tmp_path, *overrides):
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", *overrides, *SMALL, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc


def _hparams_runs(run_dir):
    events = EventAccumulator(str(tensorboard_run(run_dir)))
    events.Reload()
    return events.PluginTagToContent("hparams")


def test_summary_ranks_runs_best_first_and_lists_failed_ones_last(tmp_path):
    for job, acc, lr in ((0, 0.5, 0.1), (1, 0.9, 0.01), (2, None, 1.0), (10, 0.7, 0.03)):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}", "seed=1"]))
        if acc is not None:
            (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"val/acc": acc, "val/loss": 1 - acc}))
    rows = summarize(tmp_path)
    assert [r["run"] for r in rows] == ["1", "10", "0", "2"]
    assert rows[-1]["metrics"] is None
    assert [r["run"] for r in summarize(tmp_path, "val/loss")] == ["1", "10", "0", "2"]  # a loss is minimised
    assert [r["run"] for r in summarize(tmp_path, "val/acc", "minimize")] == ["0", "10", "1", "2"]
    table = markdown(rows, "val/acc")
    assert table.startswith("Every run: seed=1\n")
    assert "| 1 | 0.9000 |" in table and "| optimizer.lr=0.01 |" in table and "| 2 | failed |" in table


@pytest.mark.slow
def test_a_grid_sweep_leaves_two_runs_in_one_multirun_directory(tmp_path):
    sweep_dir, proc = _sweep(tmp_path, "optimizer.lr=0.003,0.03")
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    accs = {run: json.loads((sweep_dir / run / "metrics.json").read_text())["val/acc"] for run in runs}
    summary = json.loads((sweep_dir / "summary.json").read_text())
    best = max(accs, key=accs.get)
    assert summary["metric"] == "val/acc" and summary["runs"][0]["run"] == best
    assert f"best run of 2: {sweep_dir / best}, val/acc={accs[best]:.4f}" in proc.stderr + proc.stdout
    assert "optimizer.lr=0.003" in (sweep_dir / "summary.md").read_text()
    for run in runs:  # each run's HParams record: the TensorBoard HParams tab compares them
        assert "_hparams_/session_start_info" in _hparams_runs(sweep_dir / run)
    names = {tensorboard_run(sweep_dir / run).name for run in runs}
    assert len(names) == 2  # told apart by their overrides (here long enough to end in a hash)


@pytest.mark.slow
def test_an_optuna_search_runs_its_trials_and_reports_the_best(tmp_path):
    sweep_dir, _ = _sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=4")
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert runs == ["0", "1", "2", "3"]
    accs = [json.loads((sweep_dir / run / "metrics.json").read_text())["val/acc"] for run in runs]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(accs))
    assert set(result["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "model.dropout",
        "model.label_smoothing",
        "data.batch_size",
    }
    assert 0.0003 <= result["best_params"]["optimizer.lr"] <= 0.03
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["runs"][0]["metrics"]["val/acc"] == pytest.approx(max(accs))
    # the trials drew different settings, and each is in its run's recorded overrides
    drawn = [yaml.safe_load((sweep_dir / run / ".hydra" / "overrides.yaml").read_text()) for run in runs]
    assert len({tuple(sorted(o for o in d if o.startswith("optimizer.lr="))) for d in drawn}) == 4
