"""Sweeps: a grid with -m and an Optuna search, each one multirun directory whose runs
compare in TensorBoard's HParams tab, with a summary of the best run."""

import json
import statistics

import pytest
import yaml
from omegaconf import OmegaConf

from handprop.sweep import SweepSummary, by_configuration, markdown, summarize

from conftest import FAST, run_cli

SMALL = [*FAST, "model.hidden=[32]"]


def _sweep(tmp_path, *overrides):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("train.py", "-m", *overrides, *SMALL, f"hydra.sweep.dir={sweep_dir}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc


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


def _job(sweep_dir, job, overrides, acc):
    (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
    (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if acc is not None:
        (sweep_dir / str(job) / "metrics.json").write_text(json.dumps({"val/acc": acc, "val/loss": 1 - acc}))


def test_runs_that_differ_only_in_seed_are_one_configuration(tmp_path):
    """-m seed=0,1,2 model.hidden=[64],[128] (one run of [128] failed): a row per
    configuration, mean and sd over its seeds, best mean first; the numbers recounted."""
    accs = {("[64]", 0): 0.91, ("[64]", 1): 0.93, ("[64]", 2): 0.92, ("[128]", 0): 0.95, ("[128]", 1): 0.94}
    job = 0
    for hidden in ("[64]", "[128]"):
        for seed in (0, 1, 2):
            _job(tmp_path, job, [f"seed={seed}", f"model.hidden={hidden}"], accs.get((hidden, seed)))
            job += 1
    groups = by_configuration(summarize(tmp_path))
    assert [g["overrides"] for g in groups] == [["model.hidden=[128]"], ["model.hidden=[64]"]]
    for g, hidden in zip(groups, ("[128]", "[64]")):
        values = [v for (h, _), v in accs.items() if h == hidden]
        assert g["n"] == len(values) and g["mean"] == pytest.approx(sum(values) / len(values))
        mean = sum(values) / len(values)
        assert g["sd"] == pytest.approx((sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5)
        assert g["values"] == {str(s): accs[(hidden, s)] for s in (0, 1, 2) if (hidden, s) in accs}
    assert groups[0]["failed"] == 1 and groups[1]["failed"] == 0
    assert [g["overrides"] for g in by_configuration(summarize(tmp_path), "val/loss")][0] == ["model.hidden=[128]"]

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "optimized_metric": "val/acc"})
    with pytest.raises(SystemExit) as ended:  # (a job without a result: the sweep's exit status says so)
        SweepSummary().on_multirun_end(config)
    assert ended.value.code == 1
    text = (tmp_path / "summary.md").read_text()
    top = groups[0]
    assert "## By configuration, over seeds (best mean first)" in text
    assert f"| model.hidden=[128] | {top['mean']:.4f} | {top['sd']:.4f} | 2 (1 failed) | 0: 0.9500, 1: 0.9400 |" in text
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["configurations"][1]["mean"] == pytest.approx(statistics.fmean([0.91, 0.93, 0.92]))


def test_a_sweep_without_seeds_has_no_configuration_table(tmp_path):
    for job, lr in enumerate((0.1, 0.01)):
        _job(tmp_path, job, [f"optimizer.lr={lr}"], 0.5 + job / 10)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "By configuration" not in (tmp_path / "summary.md").read_text()
    assert "configurations" not in json.loads((tmp_path / "summary.json").read_text())
    one = by_configuration(summarize(tmp_path))  # still one group per run, n = 1, no sd
    assert [(g["n"], g["sd"]) for g in one] == [(1, None), (1, None)]


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
