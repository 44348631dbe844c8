"""After a ``-m`` sweep: every run of the multirun directory ranked by the metric it optimised.

A Hydra callback (``conf/hydra/default.yaml``, ``hydra.callbacks.sweep_summary``): when a
grid sweep (``python train.py -m optimizer.lr=0.01,0.03``) or an Optuna search
(``hparams_search=optuna``) ends, it reads each run's ``metrics.json`` and the overrides
Hydra recorded for it, and writes ``summary.md`` (a table, best run first) and
``summary.json`` into the sweep directory, and logs the best run. The runs' TensorBoard
HParams records compare the same runs interactively: ``tensorboard --logdir <sweep dir>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .rundir import recorded_overrides

log = logging.getLogger(__name__)

COLUMNS = ("val/acc", "test/acc", "val/loss", "time/fit_s")


def summarize(sweep_dir: str | Path, metric: str = "val/acc", direction: str | None = None) -> list[dict]:
    """One row per run directory of a sweep (``<sweep_dir>/<job number>/``), best first by
    ``metric`` (maximised, or minimised for a loss unless ``direction`` says). A run that
    left no metrics.json (it failed) comes last, with ``metrics: None``."""
    direction = direction or ("minimize" if "loss" in metric else "maximize")
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides = job / ".hydra" / "overrides.yaml"
        if not job.is_dir() or not overrides.is_file():
            continue
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        rows.append({"run": job.name, "overrides": recorded_overrides(job), "metrics": metrics})
    sign = -1 if direction == "maximize" else 1
    rows.sort(
        key=lambda r: (
            r["metrics"] is None or metric not in r["metrics"],
            sign * r["metrics"][metric] if r["metrics"] and metric in r["metrics"] else 0,
        )
    )
    return rows


def markdown(rows: list[dict], metric: str) -> str:
    """The table: the overrides every run shares above it, each run's own in its row."""
    columns = [metric, *(c for c in COLUMNS if c != metric)]
    shared = [o for o in rows[0]["overrides"] if all(o in r["overrides"] for r in rows)] if len(rows) > 1 else []
    lines = [
        f"Every run: {' '.join(shared) or '(no shared overrides)'}",
        "",
        f"| run | {' | '.join(columns)} | overrides |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for r in rows:
        m = r["metrics"] or {}
        values = [f"{m[c]:.4f}" if c in m else ("failed" if not m else "") for c in columns]
        lines.append(
            f"| {r['run']} | {' | '.join(values)} | {' '.join(o for o in r['overrides'] if o not in shared)} |"
        )
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Writes summary.md / summary.json at the end of a multirun and logs the best run."""

    def __init__(self, metric: str | None = None, direction: str | None = None):
        self.metric, self.direction = metric, direction

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = self.metric or config.get("optimized_metric") or "val/acc"
        direction = self.direction or OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        if not sweep_dir.is_dir():
            return
        rows = summarize(sweep_dir, metric, direction if isinstance(direction, str) else None)
        if not rows:
            return
        (sweep_dir / "summary.md").write_text(
            f"# {sweep_dir}: runs by {metric}, best first\n\n" + markdown(rows, metric)
        )
        (sweep_dir / "summary.json").write_text(json.dumps({"metric": metric, "runs": rows}, indent=2) + "\n")
        best = rows[0]
        if best["metrics"] and metric in best["metrics"]:
            log.info(
                "best run of %d: %s, %s=%.4f, %s",
                len(rows),
                sweep_dir / best["run"],
                metric,
                best["metrics"][metric],
                " ".join(best["overrides"]),
            )
        log.info("sweep summary: %s", sweep_dir / "summary.md")
