"""Evaluate a checkpoint on a dataset's test split: ``python eval.py ckpt_path=PATH [data=NAME]``.

    python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt
    python eval.py ckpt_path=... data=mnist data.data_dir=data   # only the t10k files needed
    python eval.py --help   # its settings and examples (hydra.help in conf/eval.yaml)

Writes metrics.json in its own run directory. Config: conf/eval.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig

from handprop.console import as_entry_point
from handprop.gate.keys import run_main
from handprop.rundir import exit_on_launch_problem


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from handprop.train import evaluate  # noqa: PLC0415 -- torch and Lightning load only when a run starts, not for --help

    as_entry_point(lambda: evaluate(cfg))


if __name__ == "__main__":
    exit_on_launch_problem()  # a stray LOCAL_RANK / RANK / SLURM_PROCID: named, before any work
    run_main(main, sys.argv[1:])  # a key that is not in the config (model.hiden=3): named, with the nearest real key
