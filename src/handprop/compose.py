"""A run's config without the command line: ``compose(overrides, output_dir)`` composes
conf/ as ``python train.py OVERRIDES`` does, for the benchmarks, the tests and a notebook."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[2] / "conf"  # the checkout's configs (src layout, editable install)


def compose(overrides=(), output_dir: str | Path | None = None, name: str = "train") -> DictConfig:
    """The config ``python train.py OVERRIDES`` composes (``name="eval"``: eval.py's).

    With ``output_dir``, complete as Hydra's app makes it -- the run directory set,
    ``${hydra:...}`` resolvable -- so that ``handprop.train.train(cfg)`` can run it."""
    if not CONF.is_dir():
        raise FileNotFoundError(f"{CONF}: compose reads the project's conf/; use it from a checkout")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(name, overrides=list(overrides), return_hydra_config=output_dir is not None)
    if output_dir is not None:
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.root_dir = str(CONF.parent)
            del cfg.hydra
    return cfg
