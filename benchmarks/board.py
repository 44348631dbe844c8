"""Section ``board``: TensorBoard's Backprop tab under a real ``tensorboard`` process.

A logdir of ``runs`` run directories (the default network's snapshot in one, the lesson's
in another, copies beside them) is served by ``tensorboard --logdir``, its torch limited
to one thread (``OMP_NUM_THREADS=1``). Measured over HTTP on 127.0.0.1, warm (after a first
request), each request a fresh connection as a browser's fetch may be:

    /data/plugins_listing   TensorBoard asks every plugin's is_active: ours answers from its cache
    explain                 one digit through the network and back, the default network and the lesson's

Goals (docs/benchmarks.md): is_active under 50 ms with 200 runs, explain's p95 under 50 ms
for the default network. ``--quick`` asks the plugin's WSGI app in this process instead (no
TensorBoard process to start): that the section runs, not the figure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import timing
import torch
from tensorboard.plugins.base_plugin import TBContext
from werkzeug.test import Client
from werkzeug.wrappers import Response

from handprop.board.plugin import BackpropPlugin
from handprop.callbacks.snapshots import write_digits, write_snapshot
from handprop.data import load_split
from handprop.module import DigitClassifier

GOAL_MS = 50.0
NETWORKS = {
    "default": {},  # 784-512-256-10 ReLU, softmax and cross-entropy, standardised pixels
    "lesson": dict(hidden=[16, 16], activation="sigmoid", output_activation="sigmoid", loss="quadratic"),
}


def _logdir(root: Path, runs: int) -> None:
    train, val = load_split("sample", "train"), load_split("sample", "val")
    for name, hp in NETWORKS.items():
        directory = root / name / "backprop"
        directory.mkdir(parents=True)
        write_digits(directory, val, train, 128, 0.1)
        write_snapshot(directory, DigitClassifier(**hp), 0, 0, val)
    for i in range(runs - len(NETWORKS)):  # the rest: copies of the lesson's run, as a long-lived logdir holds
        shutil.copytree(root / "lesson", root / f"2026-01-01/{i:03d}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """``tensorboard --logdir LOGDIR`` on 127.0.0.1, as a user starts it (``env``: its
    environment); what it prints is kept for the message if it stops."""

    def __init__(self, logdir: Path, env: dict | None = None):
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(logdir), "--host", "127.0.0.1"]
        self.output = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [*command, "--port", self.url.rsplit(":", 1)[1]], env=env, stdout=self.output, stderr=subprocess.STDOUT
        )

    def ready(self) -> TensorBoard:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/data/plugins_listing", timeout=30).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    self.output.seek(0)
                    raise RuntimeError(f"tensorboard stopped:\n{self.output.read()[-3000:]}") from None
                time.sleep(0.2)
        raise TimeoutError(f"TensorBoard did not answer at {self.url}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.output.close()


def _ms(url: str, body: dict | None = None) -> float:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return 1000 * (time.perf_counter() - start)


def _p95(samples: list[float]) -> float:
    return sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]


def _over_http(root: Path, requests: int) -> tuple[list[float], dict]:
    """The plugins listing's and explain's latencies from a real ``tensorboard`` process."""
    board = TensorBoard(root, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}).ready()
    try:
        listing = [_ms(board.url + "/data/plugins_listing") for _ in range(max(5, requests // 10))]
        return listing, _explain(lambda body: _ms(board.url + "/data/plugin/backprop/explain", body), requests)
    finally:
        board.stop()


def _in_process(plugin: BackpropPlugin, requests: int) -> dict:
    """explain's latency through the plugin's own WSGI app, without HTTP (--quick: no
    TensorBoard process to start, and torch is loaded already)."""
    client = Client(plugin.get_plugin_apps()["/explain"], Response)

    def ask(body: dict) -> float:
        start = time.perf_counter()
        client.post("/", data=json.dumps(body), content_type="application/json")
        return 1000 * (time.perf_counter() - start)

    with timing.threads(1):
        return _explain(ask, requests)


def _explain(ask, requests: int) -> dict:
    explain = {}
    for name in NETWORKS:
        body = {"run": name, "snapshot": 0, "digit": 0}
        ask(body)  # loads the network
        times = [ask({**body, "digit": i % 100}) for i in range(requests)]
        explain[name] = {"median_ms": statistics.median(times), "p95_ms": _p95(times)}
    return explain


def measure(args) -> dict:
    runs, requests = (5, 5) if args.quick else (200, 200)
    root = Path(tempfile.mkdtemp(prefix="handprop-board-"))
    try:
        _logdir(root, runs)
        plugin = BackpropPlugin(TBContext(logdir=str(root)))
        start = time.perf_counter()
        plugin.is_active()
        first_ms = 1000 * (time.perf_counter() - start)
        cached = []
        for _ in range(requests):
            start = time.perf_counter()
            plugin.is_active()
            cached.append(1000 * (time.perf_counter() - start))
        if args.quick:
            listing, explain = [], _in_process(plugin, requests)
        else:
            listing, explain = _over_http(root, requests)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "runs": runs,
        "requests": requests,
        "over": "the plugin's WSGI app, in process" if args.quick else "HTTP, a tensorboard process",
        "tensorboard_threads": 1,
        "is_active_first_ms": first_ms,
        "is_active_cached_p95_ms": _p95(cached),
        "plugins_listing_p95_ms": _p95(listing) if listing else None,
        "explain": explain,
        "goal_ms": GOAL_MS,
        "torch_threads_here": torch.get_num_threads(),
    }


def report(b: dict) -> str:
    listing = (
        f"; TensorBoard's /data/plugins_listing {b['plugins_listing_p95_ms']:.1f} ms p95"
        if b["plugins_listing_p95_ms"] is not None
        else ""
    )
    lines = [
        f"\nBackprop tab: a logdir of {b['runs']} runs, over {b['over']} (torch on 1 thread), warm",
        f"  is_active: {b['is_active_first_ms']:.1f} ms the first time (it looks), "
        f"{b['is_active_cached_p95_ms']:.3f} ms p95 after (from its cache){listing}",
    ]
    for name, e in b["explain"].items():
        verdict = "under" if e["p95_ms"] <= b["goal_ms"] else "OVER"
        lines.append(
            f"  explain, {name} network: {e['median_ms']:.1f} ms median, {e['p95_ms']:.1f} ms p95 over "
            f"{b['requests']} requests ({verdict} the {b['goal_ms']:.0f} ms goal)"
        )
    return "\n".join(lines)
