"""pyproject.toml declares versions the test suite has passed on: every runtime dependency's
lower bound is pinned in .ci/lowest.txt, which CI (.ci/run) installs and tests."""

import re
from importlib import metadata
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _lower_bounds() -> dict[str, str]:
    """The installed handprop's runtime requirements (not an extra's): name -> lower bound."""
    bounds = {}
    for requirement in metadata.requires("handprop") or []:
        if "extra ==" in requirement:
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        lower = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
        assert lower, f"{requirement}: every runtime dependency needs a lower bound the suite is run on"
        bounds[name.lower()] = lower.group(1)
    return bounds


def _pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "lowest.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip().lower(): version.strip() for name, version in pairs}


def test_every_lower_bound_is_pinned_where_ci_tests_it():
    bounds, pins = _lower_bounds(), _pins()
    assert {"torch", "lightning", "torchmetrics", "hydra-core", "tensorboard"} <= set(bounds)
    pinned = {name: pins.get(name) and Version(pins[name]) for name in bounds}
    assert pinned == {name: Version(version) for name, version in bounds.items()}


def test_ci_runs_the_suite_against_those_pins():
    assert ".ci/lowest" in (ROOT / ".ci" / "run").read_text()
    lowest = (ROOT / ".ci" / "lowest").read_text()
    assert "-c .ci/lowest.txt" in lowest and "pytest" in lowest
