"""Where a run's scalars go: TensorBoard's event files and a CSV file beside them."""

from __future__ import annotations

import os

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, writing exactly where it is told: Lightning's
    expands ``$VARS`` and ``~`` in its directory, which Hydra and the checkpoints do not,
    so a run directory named with a ``$`` would have its event files written elsewhere."""

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        log_dir = os.path.join(self.root_dir, version)
        return os.path.join(log_dir, self.sub_dir) if isinstance(self.sub_dir, str) else log_dir
