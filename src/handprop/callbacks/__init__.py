"""Lightning callbacks: handprop's checks, its checkpoints, and the pictures of a run."""

from .checkpoints import BestCheckpoint, InterruptCheckpoint, LastCheckpoint
from .checks import GradientAudit, NumericsGuard, ReplicaCheck, parameters_digest
from .visuals import TensorBoardPictures, TrainingScalars

__all__ = [
    "BestCheckpoint",
    "GradientAudit",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "NumericsGuard",
    "ReplicaCheck",
    "TensorBoardPictures",
    "TrainingScalars",
    "parameters_digest",
]
