"""From the composed config to objects: every node is built by Hydra's ``instantiate``.

A value the called code refuses is reported under the config key the user typed: a
``SettingError`` raised by handprop's own constructors (``dropout=1.5: ...`` from the
model reads ``model.dropout=1.5: ...``) or a ``MisconfigurationException`` raised by
Lightning's. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from .errors import ConfigError, HandpropError
from .rules import SettingError


def build(key: str, node: DictConfig, **kwargs):
    """``instantiate(node)``, with a refused value named by its config key ``key.name``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, SettingError):
            raise ConfigError(cause.message(f"{key}.")) from None
        if isinstance(cause, MisconfigurationException) or (
            isinstance(cause, ValueError) and not _ours(node)
        ):  # how Lightning and PyTorch refuse a setting; handprop's own code refuses with SettingError
            raise ConfigError(f"{key}: {cause}") from None
        if isinstance(cause, HandpropError):
            raise cause from None
        raise


def _ours(node: DictConfig) -> bool:
    """Whether a node calls handprop's own code (which refuses a setting with SettingError)."""
    return str(node.get("_target_", "")).startswith("handprop.")


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


def construction_problems(cfg: DictConfig, skip: set[str] = frozenset()) -> list[str]:
    """What handprop's own constructors refuse in this config, one line per node: the data
    module, the model (with its optimiser, which its L2 rule reads), handprop's callbacks
    and its optimiser, built on PyTorch's meta device (no memory for weights, nothing run).
    ``skip``: keys already reported; a node with one is not built."""

    def reported(key: str) -> bool:
        return any(k == key or k.startswith(f"{key}.") for k in skip)

    nodes = [(key, cfg.get(key)) for key in ("data", "model")]
    nodes += [(f"callbacks.{name}", node) for name, node in (cfg.get("callbacks") or {}).items()]
    problems = []
    for key, node in nodes:
        if node is None or not _ours(node) or reported(key):
            continue
        kwargs = {"_convert_": "all"}
        if key == "model" and cfg.get("optimizer") is not None and not reported("optimizer"):
            kwargs["optimizer"] = build("optimizer", cfg.optimizer)
        try:
            with torch.device("meta"):
                build(key, node, **kwargs)
        except HandpropError as e:
            problems.append(str(e))
        except InstantiationException as e:
            if not isinstance(e.__cause__, InterpolationResolutionError):
                raise
            # a value only a Hydra run fills in (${hydra:runtime.output_dir}): checked when it runs
    optimizer = cfg.get("optimizer")
    if optimizer is not None and _ours(optimizer) and not reported("optimizer"):
        try:  # handprop's optimiser checks its settings when built on parameters: one, on the meta device
            build("optimizer", optimizer, _convert_="all")([torch.nn.Parameter(torch.empty(1, device="meta"))])
        except SettingError as e:
            problems.append(e.message("optimizer."))
    return problems
