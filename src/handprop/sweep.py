"""After a ``-m`` sweep: every run of the multirun directory ranked by the metric it optimised.

A Hydra callback (``conf/hydra/default.yaml``, ``hydra.callbacks.sweep_summary``): when a
grid sweep (``python train.py -m optimizer.lr=0.01,0.03``) or an Optuna search
(``hparams_search=optuna``) ends, it reads each run's ``metrics.json`` and the overrides
Hydra recorded for it, and writes ``summary.md`` (a table, best run first) and
``summary.json`` into the sweep directory, and logs the best run. Runs that differ only in
their ``seed`` (``-m seed=0,1,2 model.hidden=[64],[128]``) are also told as one
configuration each: mean, standard deviation and n over the seeds, best mean first
(``by_configuration``), the form of handprop's own "mean +- sd over 3 seeds". The runs' TensorBoard
HParams records compare the same runs interactively: ``tensorboard --logdir <sweep dir>``.
"""

from __future__ import annotations

import atexit
import json
import logging
import statistics
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .launch import has_result, read_record
from .rundir import recorded_overrides

log = logging.getLogger(__name__)

COLUMNS = ("val/acc", "test/acc", "val/loss", "time/fit_s")


def _sign(metric: str, direction: str | None) -> int:
    """-1 for a metric maximised (``direction``, or by default any but a loss), +1 for one
    minimised: sorting by sign * value puts the best first."""
    return 1 if (direction or ("minimize" if "loss" in metric else "maximize")) == "minimize" else -1


def _job_order(name: str) -> tuple[int, str]:
    """Job directories in the order Hydra numbered them (2 before 10)."""
    return len(name), name


def _shared(overrides: list[list[str]]) -> list[str]:
    """The overrides every one of these lists holds (none for a single list: it shares with nothing)."""
    return [o for o in overrides[0] if all(o in other for other in overrides)] if len(overrides) > 1 else []


def summarize(sweep_dir: str | Path, metric: str = "val/acc", direction: str | None = None) -> list[dict]:
    """One row per run directory of a sweep (``<sweep_dir>/<job number>/``), best first by
    ``metric`` (maximised, or minimised for a loss unless ``direction`` says). A run that
    left no metrics.json comes last, with ``metrics: None``; ``job`` is the job's own record
    of how it ended (``job.json``: status, exit status, error), None for none."""
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: _job_order(p.name)):
        overrides = job / ".hydra" / "overrides.yaml"
        if not job.is_dir() or not overrides.is_file():
            continue
        record = read_record(job)
        metrics = json.loads((job / "metrics.json").read_text()) if has_result(record, job) else None
        overrides = [o for o in recorded_overrides(job) if not o.startswith("fill_in=")]  # (the same job)
        rows.append({"run": job.name, "overrides": overrides, "metrics": metrics, "job": record})
    sign = _sign(metric, direction)
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
    shared = _shared([r["overrides"] for r in rows])
    lines = [
        f"Every run: {' '.join(shared) or '(no shared overrides)'}",
        "",
        f"| run | {' | '.join(columns)} | overrides |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for r in rows:
        m = r["metrics"] or {}
        status = (r.get("job") or {}).get("status")
        missing = {"running": "killed?", "done": "no metrics"}.get(status, status or "failed")
        values = [f"{m[c]:.4f}" if c in m else (missing if not m else "") for c in columns]
        lines.append(
            f"| {r['run']} | {' | '.join(values)} | {' '.join(o for o in r['overrides'] if o not in shared)} |"
        )
    return "\n".join(lines) + "\n"


def outcome(row: dict) -> str:
    """How a job without a result ended, as its record tells it."""
    record = row.get("job") or {}
    status = record.get("status")
    if status in ("failed", "interrupted", "requeued"):
        return f"{status} (exit status {record.get('exit')}): {record.get('error')}"
    if status == "running":
        return f"killed, or still running (pid {record.get('pid')} on {record.get('host')}): see its train.log"
    if status == "done":
        return "done, but its metrics.json is missing"
    return "no record of its end (killed before it started?): see its train.log"


def failures_markdown(rows: list[dict]) -> str:
    """The jobs without a result, each with how it ended: empty when every job has one."""
    failed = [r for r in rows if not r["metrics"]]
    if not failed:
        return ""
    shared = _shared([r["overrides"] for r in rows])
    lines = ["| run | how it ended | overrides |", "|---|---|---|"]
    for r in failed:
        own = " ".join(o for o in r["overrides"] if o not in shared)
        lines.append(f"| {r['run']} | {outcome(r).replace('|', '/')} | {own} |")
    return "\n".join(lines) + "\n"


def _seed_of(overrides: list[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), None)


def by_configuration(rows: list[dict], metric: str = "val/acc", direction: str | None = None) -> list[dict]:
    """The runs grouped by their overrides less ``seed=``: one entry per configuration with
    ``n`` (runs that reported ``metric``), ``mean``, ``sd`` (the sample standard deviation,
    None for one run), ``values`` ({seed: value}, in the runs' order), ``failed`` (runs
    without the metric) and ``runs``; best mean first (``direction`` as ``summarize``'s)."""
    groups: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: _job_order(r["run"])):
        key = tuple(sorted(o for o in r["overrides"] if not o.startswith("seed=")))  # (in any order)
        group = groups.setdefault(key, {"overrides": list(key), "values": {}, "failed": 0, "runs": []})
        group["runs"].append(r["run"])
        value = (r["metrics"] or {}).get(metric)
        if value is None:
            group["failed"] += 1
        else:
            group["values"][_seed_of(r["overrides"]) or f"run {r['run']}"] = value
    out = []
    for group in groups.values():
        values = list(group["values"].values())
        group["n"] = len(values)
        group["mean"] = statistics.fmean(values) if values else None
        group["sd"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(group)
    sign = _sign(metric, direction)
    out.sort(key=lambda g: (g["mean"] is None, sign * g["mean"] if g["mean"] is not None else 0))
    return out


def configurations_markdown(groups: list[dict], metric: str) -> str:
    """The table of configurations: mean +- sd over seeds, n, and each seed's value."""
    shared = _shared([g["overrides"] for g in groups])
    lines = [f"| configuration | {metric} mean | sd | n | per seed |", "|---|---|---|---|---|"]
    for g in groups:
        own = " ".join(o for o in g["overrides"] if o not in shared) or "(every run)"
        mean = f"{g['mean']:.4f}" if g["mean"] is not None else "failed"
        sd = f"{g['sd']:.4f}" if g["sd"] is not None else ""
        seeds = ", ".join(f"{seed}: {value:.4f}" for seed, value in g["values"].items())
        failed = f" ({g['failed']} failed)" if g["failed"] else ""
        lines.append(f"| {own} | {mean} | {sd} | {g['n']}{failed} | {seeds} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Writes summary.md / summary.json at the end of a multirun and logs the best run; if
    the sweep ends by an exception instead (a sweeper that gives up, a launcher whose
    worker was killed), when the process exits."""

    def __init__(self, metric: str | None = None, direction: str | None = None):
        self.metric, self.direction = metric, direction
        self._pending: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._pending = config
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if self._pending is not None:
            log.warning("the sweep ended early: its summary is built from the job directories there are")
            self._write(self._pending)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """The summary; then, if some job has no result, the sweep's exit status says so
        (2 when every one of them was refused for a config a user can fix, else 1)."""
        failed = self._write(config)
        if failed:
            sys.exit(2 if all((r.get("job") or {}).get("exit") == 2 for r in failed) else 1)

    def _write(self, config: DictConfig) -> list[dict]:
        """summary.md and summary.json; the rows of the jobs without a result."""
        self._pending = None
        sweep_dir = Path(config.hydra.sweep.dir)
        metric = self.metric or config.get("optimized_metric") or "val/acc"
        direction = self.direction or OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        direction = direction if isinstance(direction, str) else None  # (a multi-objective search: a list)
        if not sweep_dir.is_dir():
            return []
        rows = summarize(sweep_dir, metric, direction)
        if not rows:
            return []
        text = f"# {sweep_dir}: runs by {metric}, best first\n\n" + markdown(rows, metric)
        record = {"metric": metric, "runs": rows}
        groups = by_configuration(rows, metric, direction)
        if any(g["n"] + g["failed"] > 1 for g in groups):  # a sweep over seeds
            text += f"\n## By configuration, over seeds (best mean first)\n\n{configurations_markdown(groups, metric)}"
            record["configurations"] = groups
            _log_best_configuration(groups[0], metric)
        failed = [r for r in rows if not r["metrics"]]
        if failed:
            text += f"\n## Jobs without a result\n\n{failures_markdown(rows)}"
            for r in failed:
                log.warning("job %s: %s", sweep_dir / r["run"], outcome(r))
        (sweep_dir / "summary.md").write_text(text)
        (sweep_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
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
        if failed:
            log.error("%d of %d jobs have no result (listed in summary.md)", len(failed), len(rows))
        return failed


def _log_best_configuration(top: dict, metric: str) -> None:
    if top["mean"] is not None:
        sd = f" +- {top['sd']:.4f}" if top["sd"] is not None else ""
        log.info(
            "best configuration by mean: %s, %s=%.4f%s over %d seeds",
            " ".join(top["overrides"]) or "(every run)",
            metric,
            top["mean"],
            sd,
            top["n"],
        )
