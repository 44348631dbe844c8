"""Train handprop's digit MLP: ``python train.py [key=value ...]`` (Hydra overrides).

    python train.py model.hidden=[512,256] optimizer.lr=0.01 trainer.max_epochs=30
    python train.py data=fashion_mnist data.data_dir=/usr/share/datasets/fashion-mnist
    python train.py ckpt_path=outputs/<run>/checkpoints/last.ckpt   # resume
    python train.py --help   # the config groups, examples, where runs go (conf/hydra/default.yaml)

The composed config lives in conf/train.yaml; the work in handprop.train.train, imported
when a run starts: torch and Lightning take seconds to import, and --help needs neither.
"""

import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from handprop.console import as_entry_point
from handprop.errors import HandpropError
from handprop.gate.keys import run_main
from handprop.rundir import exit_on_launch_problem, launched_world_size

STARTED = time.perf_counter()  # the summary's wall time: torch, Lightning and the data load after this


def _sweep_problem(cfg: DictConfig) -> str | None:
    """trainer=ddp inside a -m sweep of one machine: Lightning re-launches this script for
    every extra process, and the re-launched script would start the whole sweep again (or
    hang). Under srun (hydra/launcher=slurm with several tasks) SLURM started the processes
    and Lightning re-launches nothing: there it is the right choice."""

    strategy = str(cfg.trainer.get("strategy", "auto"))
    if (
        HydraConfig.get().mode == RunMode.MULTIRUN
        and strategy.startswith("ddp")
        and "spawn" not in strategy
        and launched_world_size() <= 1
    ):
        return (
            f"trainer.strategy={strategy} cannot run inside a -m sweep on one machine: it re-launches train.py "
            "for every process. Use trainer=ddp_spawn for sweeps, or hydra/launcher=slurm with "
            "hydra.launcher.tasks_per_node=N on a cluster (srun starts the processes there)."
        )
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from handprop.train import train  # noqa: PLC0415 -- torch and Lightning load only when a run starts, not for --help

    hydra_cfg = HydraConfig.get()
    single = hydra_cfg.mode == RunMode.RUN  # (a sweep's job: timed from its own start)

    def run() -> dict:
        problem = _sweep_problem(cfg)
        if problem:
            raise HandpropError(problem)
        return train(cfg, began=STARTED if single else None)

    if not single:  # a job of a sweep: its failure is recorded in its directory, and the sweep goes on
        from handprop.launch import sweep_job  # noqa: PLC0415

        return sweep_job(cfg, run, list(hydra_cfg.overrides.task), hydra_cfg.launcher, hydra_cfg.sweeper)
    metrics = as_entry_point(run)
    return metrics.get(cfg.get("optimized_metric", "val/acc"))


if __name__ == "__main__":
    exit_on_launch_problem()  # a stray LOCAL_RANK / RANK / SLURM_PROCID: named, before any work
    run_main(main, sys.argv[1:])  # a key that is not in the config (model.hiden=3): named, with the nearest real key
