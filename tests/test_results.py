"""The results tables: built from runs (runs.json), never typed; ``--run`` runs only the
cells that are missing or were made by other code."""

import json
from pathlib import Path

import pytest
import yaml

from handprop.results import DOCUMENTS, RUNS, TABLES, batches, fingerprint, plan
from handprop.results_tables import MARKER, render, write_tables

from conftest import ROOT, run_cli


def _results(*args):
    proc = run_cli("-m", "handprop.results", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_quick_results_run_the_missing_cells_and_then_nothing(tmp_path):
    """--quick: two experiments on the embedded sample, one epoch, through the joblib
    launcher; the table holds each run's own metrics.json; a second call runs nothing (a
    cell made by other code is run again: the test of ``plan`` below)."""
    first = _results("--quick", "--out", str(tmp_path))
    assert "quick/3b1b: seeds 0 (missing)" in first and "quick/nielsen_ch1: seeds 0 (missing)" in first
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert set(runs) == {"quick/3b1b/0", "quick/nielsen_ch1/0"}
    table = (tmp_path / "results.md").read_text()
    for key, run in runs.items():
        job = Path(run["run"]) if Path(run["run"]).is_absolute() else ROOT / run["run"]
        assert json.loads((job / "metrics.json").read_text())["test/acc"] == run["test/acc"]
        assert run["fingerprint"] == fingerprint() and run["threads"] >= 1 and run["launcher"].startswith("joblib")
        assert f"| `{key.split('/')[1]}` |" in table and f"{100 * run['test/acc']:.2f}%" in table

    second = _results("--quick", "--out", str(tmp_path))
    assert "every cell is current" in second and "running" not in second


def test_the_committed_tables_are_the_generated_ones(tmp_path):
    """docs/results.md and README.md hold exactly what runs.json makes of tables.yaml: a
    table typed into them by hand would differ."""
    tables, runs = yaml.safe_load(TABLES.read_text()), json.loads(RUNS.read_text())
    copies = []
    for doc in DOCUMENTS:
        (tmp_path / doc.name).write_text(doc.read_text())
        copies.append(tmp_path / doc.name)
    assert write_tables(tables, runs, copies) == []  # nothing to change
    found = {m.group(2) for doc in DOCUMENTS for m in MARKER.finditer(doc.read_text())}
    assert found == set(tables)


def test_a_table_is_mean_and_sd_over_its_seeds_with_each_seed_and_its_provenance():
    table = {
        "seeds": [0, 1, 2],
        "rows": [{"key": "a", "published": "95%", "note": "a note"}, {"key": "b", "published": "96%"}],
    }
    cells = {0: 0.91, 1: 0.93, 2: 0.95}
    runs = {
        f"t/a/{s}": {"test/acc": v, "time/fit_s": 10.0 + s, "threads": 1, "commit": "abc1234", "machine": "m"}
        for s, v in cells.items()
    }
    text = render("t", table, runs)
    assert "| `a` | 95% | 93.00 ± 2.00% (91.00 / 93.00 / 95.00); a note |  | 10–12 s | 1 | abc1234 | m |" in text
    assert "| `b` | 96% | (not run) |" in text
    assert plan({"t": table}, runs, "code", None) == {("t", "a"): [0, 1, 2], ("t", "b"): [0, 1, 2]}
    for run in runs.values():
        run.update(fingerprint="code", overrides=[])
    assert plan({"t": table}, runs, "code", None) == {("t", "b"): [0, 1, 2]}
    runs["t/a/1"]["overrides"] = ["model.dropout=0.1"]  # (made with another recipe than the row's)
    assert plan({"t": table}, runs, "code", None) == {("t", "a"): [1], ("t", "b"): [0, 1, 2]}


def test_rows_one_key_apart_run_as_one_sweep():
    """Rows that need the same seeds and differ in one key run as one sweep over it (every
    core busy); any other row runs alone."""
    table = {
        "overrides": ["data=mnist"],
        "seeds": [0, 1, 2],
        "rows": [
            {"key": "a", "overrides": ["experiment=3b1b"]},
            {"key": "b", "overrides": ["experiment=nielsen_ch1"]},
            {"key": "c", "overrides": ["experiment=nielsen_ch3", "trainer.max_epochs=5"]},
            {"key": "d", "overrides": ["experiment=lecun_300"]},
        ],
    }
    todo = {("t", "a"): [0, 1, 2], ("t", "b"): [0, 1, 2], ("t", "c"): [0, 1, 2], ("t", "d"): [2]}
    assert [(n, [r["key"] for r in rows], seeds) for n, rows, seeds in batches({"t": table}, todo)] == [
        ("t", ["a", "b"], [0, 1, 2]),  # (c differs in two keys; d needs other seeds)
        ("t", ["c"], [0, 1, 2]),
        ("t", ["d"], [2]),
    ]
