"""The results tables of docs/results.md and README.md, built from runs, never typed.

``docs/results/tables.yaml`` says what each table holds: the rows (an experiment and its
overrides, the published figure it is measured against), the seeds, the data. Every run
that fills a cell leaves its numbers in ``docs/results/runs.json`` (committed): its
``metrics.json`` (test and validation accuracy, training time) and its ``job.json`` (the
commit, the machine, the thread count). The tables are made from that file alone, between
``<!-- results: TABLE -->`` and ``<!-- /results -->`` in the markdown files.

    python -m handprop.results                 # the tables again from runs.json; what is missing or stale
    python -m handprop.results --run           # ... after running the missing and stale cells (make results)
    python -m handprop.results --run --only classics_mnist --data-dir DIR --n-jobs 2
    python -m handprop.results --quick --out DIR   # the embedded sample, 1 epoch, 2 experiments (a self-test)

A cell is **missing** when runs.json has no run for it, **stale** when its run was made by
training code other than today's (its ``fingerprint``, a hash of src/handprop and conf/
less ``NOT_TRAINING``, differs) or with other overrides than its row's.
``--run`` runs only those through Hydra's joblib launcher, ``--n-jobs`` at a time, each job
with its share of the cores: a sweep per row (``python train.py -m ... seed=a,b,c``), or
one for the rows that differ in one key (``experiment=a,b seed=0,1,2``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .launch import cores, git_commit, has_result, read_record
from .results_tables import cell, write_tables

ROOT = Path(__file__).resolve().parents[2]
TABLES = ROOT / "docs" / "results" / "tables.yaml"
RUNS = ROOT / "docs" / "results" / "runs.json"
DOCUMENTS = (ROOT / "docs" / "results.md", ROOT / "README.md")
KEPT = ("test/acc", "val/acc_best", "val/acc", "time/fit_s", "trainer/global_step")
QUICK = {
    "quick": {
        "title": "the quick self-test: the embedded sample, one epoch",
        "overrides": ["trainer.max_epochs=1", "callbacks.pictures=null", "callbacks.backprop_tab=null"],
        "seeds": [0],
        "rows": [
            {"key": "3b1b", "overrides": ["experiment=3b1b"], "published": "≈96% (full MNIST, 30 epochs)"},
            {"key": "nielsen_ch1", "overrides": ["experiment=nielsen_ch1"], "published": "95.42% (full MNIST)"},
        ],
    }
}


# What a training run's numbers do not depend on: the results' and sweeps' own bookkeeping,
# TensorBoard's Backprop tab, the tools that read a finished run, Hydra's own settings.
NOT_TRAINING = (
    "src/handprop/results",  # (results.py and results_tables.py)
    "src/handprop/sweep.py",
    "src/handprop/board/",
    "src/handprop/predict.py",
    "src/handprop/explain.py",
    "conf/hydra/",  # (where the runs go, the launchers, --help)
)


def fingerprint(root: Path = ROOT) -> str:
    """A hash of the code a run's numbers depend on: the files of src/handprop and conf/,
    less ``NOT_TRAINING``. A cell made by other code is stale."""
    digest = hashlib.sha1()
    for folder in ("src/handprop", "conf"):
        for path in sorted((root / folder).rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.suffix not in (".py", ".yaml") or not path.is_file() or name.startswith(NOT_TRAINING):
                continue
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def recipe(table: dict, row: dict) -> list[str]:
    """The overrides a row's runs take (less the data directory, which is the machine's)."""
    return [*table.get("overrides", []), *row.get("overrides", [])]


def plan(tables: dict, runs: dict, code: str, data_dir: str | None) -> dict[tuple[str, str], list]:
    """The seeds each (table, row) still needs: missing, or made by other code or with
    other overrides than the row's."""
    todo: dict[tuple[str, str], list] = {}
    for name, table in tables.items():
        if table.get("needs_data_dir") and not data_dir:
            continue
        for row in table["rows"]:
            wanted = {"fingerprint": code, "overrides": recipe(table, row)}
            seeds = [s for s in row.get("seeds", table["seeds"]) if stale(runs.get(cell(name, row["key"], s)), wanted)]
            if seeds:
                todo[name, row["key"]] = seeds
    return todo


def stale(run: dict | None, wanted: dict) -> bool:
    return run is None or any(run.get(k) != v for k, v in wanted.items())


def batches(tables: dict, todo: dict[tuple[str, str], list]) -> list[tuple[str, list[dict], list]]:
    """The sweeps that run ``todo``: the rows of a table that need the same seeds and whose
    overrides differ in one key only (``experiment=3b1b`` and ``experiment=nielsen_ch1``)
    run as one sweep over that key, so that the launcher keeps every core busy; any other
    row runs alone. Each: (table, its rows, the seeds)."""
    groups: dict[tuple[str, tuple, tuple], list[dict]] = {}
    for (name, key), seeds in todo.items():
        row = next(r for r in tables[name]["rows"] if r["key"] == key)
        keys = tuple(o.split("=", 1)[0] for o in recipe(tables[name], row))  # (the same keys, in the same order)
        groups.setdefault((name, tuple(seeds), keys), []).append(row)
    out = []
    for (name, seeds, _), rows in groups.items():
        if len(rows) > 1 and _one_key_apart([recipe(tables[name], r) for r in rows]) is not None:
            out.append((name, rows, list(seeds)))
        else:
            out += [(name, [row], list(seeds)) for row in rows]
    return out


def _one_key_apart(recipes: list[list[str]]) -> int | None:
    """The position at which these override lists differ, each there in the same key; None
    if they differ otherwise."""
    if len({len(r) for r in recipes}) != 1:
        return None
    apart = [i for i in range(len(recipes[0])) if len({r[i] for r in recipes}) > 1]
    if len(apart) != 1 or len({r[apart[0]].split("=", 1)[0] for r in recipes}) != 1:
        return None
    return apart[0]


def run_batch(table: dict, rows: list[dict], seeds: list, out: Path, n_jobs: int, data_dir: str | None) -> Path:
    """One sweep over the rows' seeds (and their one differing key) through the joblib
    launcher; its directory."""
    recipes = [recipe(table, row) for row in rows]
    overrides = list(recipes[0])
    if len(rows) > 1:
        i = _one_key_apart(recipes)
        key = overrides[i].split("=", 1)[0]
        overrides[i] = f"{key}={','.join(r[i].split('=', 1)[1] for r in recipes)}"
    if table.get("needs_data_dir"):
        overrides.append(f"data.data_dir={Path(data_dir).absolute()}")
    names = "+".join(row["key"] for row in rows)
    sweep = out / "runs" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{names}"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *overrides,
        f"seed={','.join(str(s) for s in seeds)}",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={n_jobs}",
        f"hydra.sweep.dir={sweep}",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
    ]
    print(f"running {names}, seeds {', '.join(map(str, seeds))}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=False)
    return sweep


def collect(sweep: Path, table_name: str, table: dict, rows: list[dict], code: str, n_jobs: int) -> dict:
    """The cells a sweep filled: each job with a result, by its row (the one whose
    overrides it ran) and its seed."""
    found = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record = read_record(job)
        if record is None or not has_result(record, job):  # (the record: the job's commit and threads)
            continue
        row = next((r for r in rows if set(recipe(table, r)) <= set(record["overrides"])), None)
        if row is None:
            continue
        values = json.loads((job / "metrics.json").read_text())
        seed = next(o.split("=", 1)[1] for o in record["overrides"] if o.startswith("seed="))
        found[cell(table_name, row["key"], seed)] = {
            **{k: values[k] for k in KEPT if k in values},
            "commit": record.get("commit"),
            "fingerprint": code,
            "overrides": recipe(table, row),
            "machine": f"{record.get('host')}, {cores()} cores ({platform.machine()})",
            "threads": record.get("threads"),
            "launcher": f"joblib, {n_jobs} jobs at once",
            "date": record.get("started"),
            "run": str(job.relative_to(ROOT)) if job.is_relative_to(ROOT) else str(job),
        }
    return found


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handprop.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run the missing and stale cells first")
    parser.add_argument("--only", default="", help="these tables only (comma-separated names of tables.yaml)")
    parser.add_argument("--rows", default="", help="these rows only (comma-separated keys), of the tables chosen")
    parser.add_argument("--data-dir", help="full MNIST, for the tables that need it (torchvision's layout)")
    parser.add_argument("--n-jobs", type=int, default=2, help="runs at once (joblib); each gets cores / n threads")
    parser.add_argument("--missing-only", action="store_true", help="run no cell that has a result, stale or not")
    parser.add_argument("--quick", action="store_true", help="a self-test: the sample, 1 epoch, 2 experiments")
    parser.add_argument("--out", type=Path, help="where runs.json, the runs and (--quick) results.md go")
    args = parser.parse_args(argv)

    if args.quick:
        out = args.out or ROOT / "outputs" / "results-quick"
        out.mkdir(parents=True, exist_ok=True)
        spec, runs_file, documents = QUICK, out / "runs.json", [out / "results.md"]
        if not documents[0].exists():
            documents[0].write_text("# Quick results\n\n<!-- results: quick -->\n<!-- /results -->\n")
        args.run = True
    else:
        out = args.out or ROOT / "outputs" / "results"
        spec = yaml.safe_load(TABLES.read_text())
        runs_file, documents = (out / "runs.json", [out / d.name for d in DOCUMENTS]) if args.out else (RUNS, DOCUMENTS)
        for copy, doc in zip(documents, DOCUMENTS):
            if args.out and not copy.exists():  # (the tables of another runs.json: beside it, not in the repository)
                out.mkdir(parents=True, exist_ok=True)
                copy.write_text(doc.read_text())
    tables = spec  # (what runs: --only and --rows choose; every table is written)
    if args.only:
        unknown = set(args.only.split(",")) - set(tables)
        if unknown:
            parser.error(f"--only {','.join(sorted(unknown))}: not a table of {TABLES} ({', '.join(tables)})")
        tables = {k: v for k, v in tables.items() if k in args.only.split(",")}
    if args.rows:
        keep = set(args.rows.split(","))
        tables = {k: {**v, "rows": [r for r in v["rows"] if r["key"] in keep]} for k, v in tables.items()}
        tables = {k: v for k, v in tables.items() if v["rows"]}
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
    code = fingerprint()
    todo = plan(tables, runs, "" if args.missing_only else code, args.data_dir)
    if args.missing_only:
        todo = {k: [s for s in v if cell(*k, s) not in runs] for k, v in todo.items()}
        todo = {k: v for k, v in todo.items() if v}
    if not todo:
        print(f"every cell is current (code {code}, commit {git_commit(ROOT)})")
    for (name, key), seeds in todo.items():
        state = ["missing" if cell(name, key, s) not in runs else "stale" for s in seeds]
        print(f"{name}/{key}: seeds {', '.join(f'{s} ({st})' for s, st in zip(seeds, state))}")
    skipped = [n for n, t in tables.items() if t.get("needs_data_dir") and not args.data_dir]
    if skipped:
        print(f"not planned without --data-dir (full MNIST): {', '.join(skipped)}")
    failed = 0
    if args.run:
        for name, rows, seeds in batches(tables, todo):
            sweep = run_batch(tables[name], rows, seeds, out, args.n_jobs, args.data_dir)
            filled = collect(sweep, name, tables[name], rows, code, args.n_jobs)
            failed += len(rows) * len(seeds) - len(filled)
            runs.update(filled)
            runs_file.parent.mkdir(parents=True, exist_ok=True)
            runs_file.write_text(json.dumps(dict(sorted(runs.items())), indent=1) + "\n")
            names = ", ".join(f"{name}/{row['key']}" for row in rows)
            print(f"{names}: {len(filled)} of {len(rows) * len(seeds)} runs have a result ({sweep / 'summary.md'})")
    for doc in write_tables(spec, runs, documents):
        print(f"tables written: {os.path.relpath(doc)}")
    if failed:
        print(f"{failed} runs have no result: see the summary.md of their sweeps above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
