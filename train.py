"""Train handprop's digit MLP: ``python train.py [key=value ...]`` (Hydra overrides).

    python train.py model.hidden=[512,256] optimizer.lr=0.01 trainer.max_epochs=30
    python train.py data=fashion_mnist data.data_dir=/usr/share/datasets/fashion-mnist
    python train.py ckpt_path=outputs/<run>/checkpoints/last.ckpt   # resume

The composed config lives in conf/train.yaml; the work in handprop.train.train.
"""

import sys

import hydra
from omegaconf import DictConfig

from handprop.train import UserError, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return metrics.get(cfg.get("optimized_metric", "val/acc"))  # for Hydra sweepers


if __name__ == "__main__":
    main()
