"""From the checked config to objects: every node is built by Hydra's ``instantiate``.

The config gate (``handprop.gate``) has checked every value before anything is built.
What only building can find -- Lightning refusing an accelerator this machine does not
have -- is reported under the config key; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from .errors import ConfigError, HandpropError


def build(key: str, node: DictConfig, **kwargs):
    """``instantiate(node)``, with Lightning's refusal named by its config key ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MisconfigurationException):  # e.g. trainer.accelerator=gpu without a GPU
            raise ConfigError(f"{key}: {e.__cause__}") from None
        if isinstance(e.__cause__, HandpropError):
            raise e.__cause__ from None
        raise


def build_all(key: str, group: DictConfig | None) -> list:
    """Callbacks and loggers are named entries, so that ``callbacks.X=null`` drops one."""
    return [build(f"{key}.{name}", node) for name, node in (group or {}).items() if node is not None]


def build_data_and_model(cfg: DictConfig):
    """The run's data module and model (with its optimiser and schedule factories), from
    the config's data, model, optimizer and scheduler groups."""
    datamodule = build("data", cfg.data, _convert_="all")
    model = build(
        "model",
        cfg.model,
        optimizer=build("optimizer", cfg.optimizer),
        scheduler=build("scheduler", cfg.scheduler) if cfg.get("scheduler") else None,
        _convert_="all",
    )
    return datamodule, model
