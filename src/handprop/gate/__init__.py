"""The config gate: every rule a run's config must keep, checked once, before anything is
built or written.

``check(cfg)`` reports every problem at once (a ``ConfigError``, one line per key, naming
the key and the fix) or returns the training run's ``Plan``:

1. **Each value on its own** (``values.py``): the types the called code's signature
   annotates, a key it does not take (with the nearest real key), the ranges of other
   libraries' settings (``RANGES``) and of handprop's own (``own_rules``), the choices.
2. **The rules that join keys** (``across.py``): manual optimisation, SDLM with a
   scheduler, early stopping with a fixed-length schedule, label smoothing and the cost,
   the data settings a dataset does not use, the global batch among the processes,
   ``ckpt_path`` with ``init_from``, l2 and the optimiser.
3. **The run's plan** (``run.py``), once every value is good: chunks, the run's length
   and the schedule's, a resume's checkpoint.

Besides the config it reads the training set's size (the embedded sample's fixed split,
or the header of a full dataset's label file) and the checkpoint that ``ckpt_path``
names. It runs as the first of Hydra's callbacks (``Gate``, conf/hydra/default.yaml),
before Hydra creates the run directory, and ``train()`` / ``evaluate()`` ask it for runs
started from Python (``compose()``): once per config and process, whoever asks first.
A key that is not in the config at all is Hydra's to refuse, before any of this: ``keys.py``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, HandpropError
from ..launch import launcher_problem, refuse_an_earlier_sweep
from . import across, run
from .across import schedule_length
from .run import MAX_CHUNK, Plan, planned_steps, train_size
from .values import leaves, value_problems

__all__ = [
    "MAX_CHUNK",
    "ConfigError",
    "Gate",
    "Plan",
    "check",
    "plan",
    "planned_steps",
    "problems",
    "schedule_length",
    "train_size",
]

_checked: dict[str, Plan] = {}  # the plans of configs that passed, by their YAML


def problems(cfg: DictConfig) -> list[str]:
    """Every value of the config that cannot work, one line each, naming the key and the fix."""
    return plan(cfg).problems


def check(cfg: DictConfig) -> Plan:
    """Every rule, once: a ConfigError naming every problem, or the training run's plan."""
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    if key in _checked:
        return _checked[key]
    result = plan(cfg)
    if result.problems:
        raise ConfigError("bad config:\n  " + "\n  ".join(result.problems))
    _checked[key] = result
    return result


def plan(cfg: DictConfig) -> Plan:
    """The training run's plan, with every problem of the config (none: it may run)."""
    values = dict(leaves(cfg))
    found = value_problems(cfg, values)
    if found:  # the rules across keys read values that are each good
        order = list(values)  # in the config's own order
        return Plan([found[k] for k in sorted(found, key=lambda k: order.index(k) if k in order else len(order))])
    return run.plan(cfg, across.problems(cfg, values), across.notes(values))


class Gate(HydraCallback):
    """Hydra callback, the first: the gate, before Hydra creates the run directory and
    writes ``.hydra/`` there; a refused run leaves nothing behind. The refusal is the
    gate's message on stderr, exit status 2. (A ``-m`` sweep's jobs are checked as each
    starts, in its own directory.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """A sweep: its launcher can start here, and its directory holds no other sweep."""
        HydraConfig.instance().set_config(config)  # (the sweep directory's path needs it)
        try:
            problem = launcher_problem(config.hydra.launcher)
            if problem:
                raise HandpropError(problem)
            refuse_an_earlier_sweep(
                Path(str(config.hydra.sweep.dir)),
                bool(config.get("fill_in")),
                list(config.hydra.overrides.task),
                str(config.hydra.sweeper.get("_target_", "")),
            )
        except HandpropError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # (Hydra sets it next, for the job; the paths need it now)
        try:
            check(config)
        except HandpropError as e:  # a bad value, or a checkpoint that cannot be read
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except Exception:  # a bug in a rule: Hydra would only warn of a callback's exception and run on
            traceback.print_exc()
            sys.exit(1)
