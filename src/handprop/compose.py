"""A run's config without the command line, for a notebook, the tests and the benchmarks.

    from handprop import compose
    from handprop.train import train
    cfg = compose(["model.hidden=[64]", "trainer.max_epochs=3"])   # as `python train.py ...` composes it
    metrics = train(cfg)                                          # into a new outputs/<date>/<time>/

``compose`` fills in what a Hydra run would (the run directory, the project's paths, the
``${hydra:...}`` values the config refers to) and refuses a key that is not in the config
with the command line's message. ``bare_config`` composes only, for reading values.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import weakref
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from . import rundir  # noqa: F401 -- registers the unique_dir resolver a composed run directory uses
from .errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"  # the checkout's configs (src layout, editable install)
ROOT = CONF.parent
_CLAIMS = itertools.count()  # each composed config claims a run directory of its own


def _compose(overrides, name: str, hydra_config: bool) -> DictConfig:
    if not CONF.is_dir():
        raise FileNotFoundError(f"{CONF}: compose reads the project's conf/; use it from a checkout")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(name, overrides=list(overrides), return_hydra_config=hydra_config)
    except ConfigCompositionException as e:
        from .gate.keys import unknown_key_message  # noqa: PLC0415 -- (the gate loads its rules)

        problem = unknown_key_message(e, list(overrides))  # a key not in the config: its message
        if problem:
            raise ConfigError(problem) from None
        raise
    finally:
        GlobalHydra.instance().clear()


def bare_config(overrides=(), name: str = "train") -> DictConfig:
    """The config ``python train.py OVERRIDES`` composes (``name="eval"``: eval.py's),
    without a run directory: to read, not to run (its paths refer to a Hydra run)."""
    return _compose(overrides, name, hydra_config=False)


def compose(overrides=(), output_dir: str | Path | None = None, name: str = "train") -> DictConfig:
    """The config ``python train.py OVERRIDES`` composes (``name="eval"``: eval.py's),
    complete as Hydra's app makes it, so that ``handprop.train.train(cfg)`` can run it.

    ``output_dir``: the run's directory; None: a new one, ``outputs/<date>/<time>`` under
    the project (as ``python train.py`` run from there names it; ``-1``, ``-2`` ... when
    taken; ``$HANDPROP_OUTPUTS/<date>/<time>`` when that is set), claimed when the run
    starts -- after the config gate, so a refused run leaves no directory -- or when
    ``cfg.paths.output_dir`` is first read. ``paths.root_dir`` is the project, so
    ``data/`` and ``outputs/`` are the same whatever directory the notebook runs in.
    ``train(cfg)`` then gives the run what ``python train.py`` gives it (``run_files``):
    ``.hydra/`` with its config and these overrides, and train.log, besides Python's
    logging, which a notebook shows.

    A key that is not in the config raises ``ConfigError`` with the command line's
    message (the nearest real key); bad values are refused by ``train(cfg)`` as on the
    command line."""
    cfg = _compose(overrides, name, hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig().set_config(cfg)
    if output_dir is None:  # claimed on first reading (rundir.unique_dir): a claim of this config's own
        base = str(cfg.paths.run_dir)  # (its time, fixed now)
        quoted = base.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${")
        output_dir = f"${{unique_dir:'{quoted}',{next(_CLAIMS)}}}"
    else:
        base = output_dir = str(Path(output_dir).absolute())
    log_format = OmegaConf.to_container(cfg.hydra.job_logging.formatters.file)
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.run_dir = output_dir, base
        del cfg.hydra
    _COMPOSED[id(cfg)] = (weakref.ref(cfg), list(overrides), log_format)
    weakref.finalize(cfg, _COMPOSED.pop, id(cfg), None)
    return cfg


_COMPOSED: dict[int, tuple] = {}  # id(cfg) -> (the config, its overrides, train.log's format): compose()'s runs


@contextlib.contextmanager
def run_files(cfg: DictConfig, job: str = "train"):
    """While a run that ``compose`` made runs (and for nothing else: a Hydra app's run has
    them from Hydra): its ``.hydra/`` (config.yaml, overrides.yaml) as Hydra writes them,
    and its log, ``<job>.log``, which gets every line the run logs."""
    entry = _COMPOSED.get(id(cfg))
    if entry is None or entry[0]() is not cfg:
        yield
        return
    _, overrides, log_format = entry
    directory = Path(cfg.paths.output_dir)
    subdir = directory / ".hydra"
    if not (subdir / "config.yaml").exists():
        subdir.mkdir(parents=True, exist_ok=True)
        recorded = OmegaConf.masked_copy(cfg, list(cfg))  # (a copy: its run directory written out, not the claim)
        with open_dict(recorded):
            recorded.paths.output_dir = str(directory)
        (subdir / "config.yaml").write_text(OmegaConf.to_yaml(recorded))
        (subdir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    handler = logging.FileHandler(directory / f"{job}.log")
    handler.setFormatter(logging.Formatter(log_format.get("format"), log_format.get("datefmt")))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
