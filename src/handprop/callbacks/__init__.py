"""Lightning callbacks: handprop's checks, its checkpoints, and the pictures of a run."""

from .checkpoints import BestCheckpoint, InterruptCheckpoint, LastCheckpoint
from .checks import GradientAudit, NumericsGuard, ReplicaCheck, parameters_digest
from .progress import ProgressBar
from .runlog import RunLog
from .scalars import TrainingScalars
from .snapshots import BackpropSnapshots
from .stopping import EarlyStopping
from .visuals import TensorBoardPictures

__all__ = [
    "BackpropSnapshots",
    "BestCheckpoint",
    "EarlyStopping",
    "GradientAudit",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "NumericsGuard",
    "ProgressBar",
    "ReplicaCheck",
    "RunLog",
    "TensorBoardPictures",
    "TrainingScalars",
    "parameters_digest",
]
