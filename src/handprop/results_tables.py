"""The markdown of the results tables (handprop.results): a table of experiments, each
over its seeds with the commit, machine and threads of its runs, or one recipe over many
seeds; written between ``<!-- results: NAME -->`` and ``<!-- /results -->``."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

MARKER = re.compile(r"(<!-- results: (\w+)( compact)? -->\n)(.*?)(<!-- /results -->)", re.S)


def cell(table: str, row: str, seed) -> str:
    """A cell's name in runs.json: table/row/seed."""
    return f"{table}/{row}/{seed}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


def _row_runs(runs: dict, table: str, row: dict, seeds: list) -> list[tuple[str, dict | None]]:
    return [(str(s), runs.get(cell(table, row["key"], s))) for s in row.get("seeds", seeds)]


def _spread(values: list[float]) -> str:
    if not values:
        return "(not run)"
    mean = statistics.fmean(values)
    sd = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * mean:.2f}{sd}%"


def _seconds(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    return f"{low:,.0f} s" if round(low) == round(high) else f"{low:,.0f}–{high:,.0f} s"


def _provenance(cells: list[dict]) -> tuple[str, str, str]:
    commits = sorted({c.get("commit") or "?" for c in cells})
    machines = sorted({c.get("machine") or "?" for c in cells})
    threads = sorted({str(c.get("threads") or "?") for c in cells})
    return ", ".join(commits), "; ".join(machines), ", ".join(threads)


def experiments_table(name: str, table: dict, runs: dict, compact: bool = False) -> str:
    """A row per experiment: published figure, mean ± sd over its seeds (each seed's test
    accuracy), training time per run, and the commit, machine and threads of its runs."""
    if compact:
        lines = ["| `experiment=` | published | handprop, mean (per seed) | training time |", "|---|---|---|---|"]
    else:
        lines = [
            "| row | published | handprop: test accuracy, mean ± sd (per seed) | best validation | time per run "
            "| threads | commit | machine |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for row in table["rows"]:
        pairs = [(s, c) for s, c in _row_runs(runs, name, row, table["seeds"]) if c and "test/acc" in c]
        tests = [c["test/acc"] for _, c in pairs]
        per_seed = " / ".join(f"{100 * c['test/acc']:.2f}" for _, c in pairs)
        result = f"{_spread(tests)} ({per_seed})" if len(pairs) > 1 else _spread(tests)
        if row.get("note"):
            result += f"; {row['note']}"
        recorded = sorted({c["time_text"] for _, c in pairs if "time_text" in c})  # (runs from before runs.json)
        time_s = _seconds([c["time/fit_s"] for _, c in pairs if "time/fit_s" in c]) or "; ".join(recorded)
        label = row.get("label", f"`{row['key']}`")
        if compact:
            lines.append(f"| {label} | {row.get('published', '')} | {result} | {time_s} |")
            continue
        best = _spread([c["val/acc_best"] for _, c in pairs if "val/acc_best" in c]).replace("(not run)", "")
        commit, machine, threads = _provenance([c for _, c in pairs])
        published = row.get("published", "")
        lines.append(f"| {label} | {published} | {result} | {best} | {time_s} | {threads} | {commit} | {machine} |")
    return "\n".join(lines) + "\n"


def seeds_table(name: str, table: dict, runs: dict, compact: bool = False) -> str:
    """One row (the table's first) run over many seeds: a line per seed, then the mean."""
    row = table["rows"][0]
    lines = [
        "| seed | test accuracy | best val accuracy | training time (`time/fit_s`) | threads | commit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    pairs = [(s, c) for s, c in _row_runs(runs, name, row, table["seeds"]) if c]
    for seed, c in pairs:
        lines.append(
            f"| {seed} | {_pct(c.get('test/acc'), 1)} | {_pct(c.get('val/acc_best'), 1)} | "
            f"{c.get('time/fit_s', 0):.1f} s | {c.get('threads')} | {c.get('commit')} |"
        )
    if pairs:
        tests = [c["test/acc"] for _, c in pairs if "test/acc" in c]
        vals = [c["val/acc_best"] for _, c in pairs if "val/acc_best" in c]
        times = [c["time/fit_s"] for _, c in pairs if "time/fit_s" in c]
        mean_time = f"{statistics.fmean(times):.1f} s" if times else ""
        lines.append(f"| mean ± sd | **{_spread(tests)}** | {_spread(vals)} | {mean_time} | | |")
    return "\n".join(lines) + "\n"


def render(name: str, table: dict, runs: dict, compact: bool = False) -> str:
    layout = seeds_table if table.get("layout") == "seeds" else experiments_table
    return layout(name, table, runs, compact)


def write_tables(tables: dict, runs: dict, documents) -> list[Path]:
    """Each marked table of each document rebuilt; the documents that changed."""
    changed = []
    for doc in documents:
        doc = Path(doc)
        if not doc.is_file():
            continue
        text = doc.read_text()

        def table_for(match: re.Match) -> str:
            name = match.group(2)
            if name not in tables:
                return match.group(0)
            return match.group(1) + render(name, tables[name], runs, bool(match.group(3))) + match.group(5)

        new = MARKER.sub(table_for, text)
        if new != text:
            doc.write_text(new)
            changed.append(doc)
    return changed
