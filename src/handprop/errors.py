"""The errors a user can fix: a bad config value, a missing or corrupt file, a wrong
checkpoint, a busy or full run directory. The entry points print them as one line
(``error: ...``) and exit with status 2; every other exception is a bug and keeps its
traceback."""


class UserError(ValueError):
    """Raised for inputs a user can fix (config, data, checkpoint, run directory); the
    message names the problem and the fix."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is not handprop's, or does not fit this run."""


class DiskFullError(UserError):
    """A file could not be written for lack of space; what was there before is intact."""


class RunDirectoryError(UserError):
    """The run directory is in use by another process, or cannot be written."""
