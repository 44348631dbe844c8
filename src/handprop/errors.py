"""The errors a user can fix, and only those: one family, ``HandpropError``.

A bad config value, a missing or corrupt data file, a wrong checkpoint, a busy or full
run directory, a run that diverged, a backward pass that disagrees with autograd: each
says what is wrong and what to do. The entry points catch this family only and print it
as one line (``error: ...``, exit status 2); any other exception is a bug and keeps its
traceback.
"""


class HandpropError(Exception):
    """Something the user can fix; the message names the problem and the fix."""


class CheckpointError(HandpropError):
    """A checkpoint that cannot be read, is not handprop's, or does not fit this run."""


class DiskFullError(HandpropError):
    """A file could not be written for lack of space; what was there before is intact."""


class RunDirectoryError(HandpropError):
    """The run directory is in use by another process, or cannot be written."""


class DataError(HandpropError):
    """A data file or directory is missing, truncated or not what it claims to be."""


class GradientAuditError(HandpropError):
    """The hand-written backward pass disagrees with PyTorch's autograd on a live batch."""


class NumericalError(HandpropError):
    """The training loss or a gradient is no longer a finite number."""


class ReplicaError(HandpropError):
    """The processes of a data-parallel run no longer hold the same weights."""


class ConfigError(HandpropError):
    """The configuration asks for something impossible; the message names the key."""
