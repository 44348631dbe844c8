"""TensorBoard's Backprop tab: the ``tensorboard_plugins`` entry point handprop installs.

The tab (``static/index.js``, plain JavaScript in TensorBoard's plugin iframe) asks these
JSON routes, under ``/data/plugin/backprop/``, relative to the page:

    GET  runs           the runs under --logdir with snapshots (backprop/index.json each)
    POST digits         a snapshot's reading of the run's validation digits, mistakes first
    POST explain        one digit through the network and back: forward pass, output against
                        desired, the nudges of every layer, one neuron's changes
    POST step           a plain gradient step on this digit, and on a mini-batch containing it
    POST check          this digit's hand-written gradients against autograd's

A request the tab refuses gets HTTP 400 and ``{"error": "<one line>"}``; nothing on disk
is ever written. torch is imported on the first request that needs it, never when
TensorBoard starts or asks whether the tab is active.
"""

from __future__ import annotations

import json
from pathlib import Path

from tensorboard.plugins import base_plugin
from werkzeug import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge

from .runs import BadRequest, RunCache, backprop_directory, run_file, snapshot_file

STATIC = Path(__file__).with_name("static")
FILES = {"/index.js": "text/javascript", "/style.css": "text/css"}  # all it serves of its own: no path from a request
POSTED = ("digits", "explain", "step", "check")  # the JSON routes a body is posted to
MAX_BODY = 8 * 2**20  # a 1024 x 1024 canvas of grey levels as JSON ("255," a pixel) is under this


def _json(payload, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


class BackpropPlugin(base_plugin.TBPlugin):
    plugin_name = "backprop"

    def __init__(self, context: base_plugin.TBContext):
        self.logdir = context.logdir or ""
        self.cache = RunCache(self.logdir)

    def is_active(self) -> bool:
        return bool(self.cache.runs())

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Backprop")

    def get_plugin_apps(self) -> dict:
        apps = {route: self._static for route in FILES}
        apps["/runs"] = self._runs
        for route in POSTED:  # each the engine's (engine.ROUTES), through _answer
            apps[f"/{route}"] = Request.application(lambda request, route=route: self._answer(request, route))
        return apps

    @Request.application
    def _static(self, request: Request) -> Response:
        route = request.path[request.path.rindex("/") :]
        return Response((STATIC / route[1:]).read_bytes(), content_type=FILES[route])

    @Request.application
    def _runs(self, request: Request) -> Response:
        """Every run with snapshots: its name, its network in words, its snapshots (epoch,
        step, validation accuracy) and when it last wrote one."""
        runs = []
        for run in self.cache.runs(fresh=True):
            try:
                index = run_file(backprop_directory(self.logdir, run), "index.json", run)
                entry = json.loads(index.read_text())
                snapshots = [{k: s.get(k) for k in ("epoch", "step", "val_acc")} for s in entry["snapshots"]]
                runs.append({"run": run, "network": str(entry["network"]), "snapshots": snapshots})
                runs[-1]["written"] = index.stat().st_mtime
            except (BadRequest, OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # a run being written, or not ours
        return _json({"logdir": str(self.logdir), "runs": runs})

    def _answer(self, request: Request, route: str) -> Response:
        """The route's JSON answer to a JSON body, or a 400 naming, in one line, what was wrong with it."""
        request.max_content_length = MAX_BODY  # (a chunked body without a length is cut off there too)
        try:
            if request.content_length is not None and request.content_length > MAX_BODY:
                raise BadRequest(f"the request is {request.content_length} bytes, more than the {MAX_BODY} accepted")
            try:
                body = json.loads(request.get_data(cache=False) or b"{}")
            except ValueError as e:
                raise BadRequest(f"the request is not JSON ({e})") from None
            except RequestEntityTooLarge:
                raise BadRequest(f"the request is more than the {MAX_BODY} bytes accepted") from None
            if not isinstance(body, dict):
                raise BadRequest("the request must be a JSON object")
            run = body.get("run")
            path = snapshot_file(self.logdir, run, body.get("snapshot"))
            from . import digits, engine  # noqa: PLC0415 -- torch loads when the tab is first used, not at TensorBoard's start

            kept = digits.run_digits(path.parent, run)
            return _json(engine.ROUTES[route](engine.network(path), kept, body))
        except BadRequest as e:
            return _json({"error": " ".join(str(e).split())}, 400)
