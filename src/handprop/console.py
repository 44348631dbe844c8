"""What a run prints: its console quiet but for handprop's own lines, and the same lines in its log.

Hydra's job logging (conf/hydra/default.yaml) sends every log record to the run's log
file and to the console; ``ConsoleFilter`` keeps the lines marked ``FILE_ONLY`` off the
console. This module imports nothing heavy: logging is configured before training starts.
"""

from __future__ import annotations

import logging
import sys
import warnings

FILE_ONLY = {"file_only": True}  # logging's `extra=`: a line for the log file only


class ConsoleFilter(logging.Filter):
    """For the console handler: drops the lines marked ``FILE_ONLY``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def logging_setup() -> list[dict]:
    """The root logger's handlers (the run's log file, the console) as data that a
    spawned process can rebuild with ``rebuild_logging``: trainer=ddp_spawn's workers start
    without Hydra's logging, and would write no epoch line to train.log."""
    specs = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            spec = {"file": handler.baseFilename}
        elif isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr):
            spec = {"stream": "stdout" if handler.stream is sys.stdout else "stderr"}
        else:
            continue
        spec["formatter"] = handler.formatter  # (a logging.Formatter is plain data: it pickles)
        spec["console"] = any(isinstance(f, ConsoleFilter) for f in handler.filters)
        specs.append(spec)
    return specs


def rebuild_logging(specs: list[dict]) -> None:
    """In a process whose root logger has no handlers (a spawned worker), the handlers
    ``logging_setup`` described; elsewhere nothing."""
    root = logging.getLogger()
    if root.handlers or not specs:
        return
    for spec in specs:
        if "file" in spec:
            handler = logging.FileHandler(spec["file"], mode="a")
        else:
            handler = logging.StreamHandler(sys.stdout if spec["stream"] == "stdout" else sys.stderr)
        handler.setFormatter(spec["formatter"] or logging.Formatter())
        if spec["console"]:
            handler.addFilter(ConsoleFilter())
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def tell(message: str, level: int = logging.ERROR) -> None:
    """A message for the user on stderr (an error, how to resume), and in the run's log."""
    logging.getLogger("handprop").log(level, message, extra=FILE_ONLY)
    print(message, file=sys.stderr, flush=True)


def record_failure() -> None:
    """An unexpected exception, in the run's log too (Hydra prints it on stderr only)."""
    logging.getLogger("handprop").exception("the run failed", extra=FILE_ONLY)


def as_entry_point(work):
    """``work()`` for an entry point: a HandpropError -- something the user can fix -- is one
    line (``error: ...``, exit status 2); any other exception is a bug, recorded in the run's
    log and raised with its traceback."""
    from .errors import HandpropError  # noqa: PLC0415

    try:
        return work()
    except HandpropError as e:
        tell(f"error: {e}")
        sys.exit(2)
    except Exception:
        record_failure()
        raise


def quiet_lightning() -> None:
    """Lightning's chatter off the console, its warnings kept (in the log file too).

    Lightning logs at INFO what a user of handprop does not act on: "GPU available: False",
    "Seed set to 42", tips to install its cloud products, "Loading `train_dataloader` ...".
    Its warnings (Python warnings) go through logging, so that the log file has them; a
    deprecation raised inside Lightning about its own use of PyTorch is not the user's to fix.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if logging.getLogger().handlers:  # (a configured root: Hydra's console and log file)
            for handler in list(logger.handlers):  # Lightning's own, added when it was imported first
                logger.removeHandler(handler)
            logger.propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    # a run writes into a checkpoint directory that holds checkpoints only when it resumes
    # its own (rundir.refuse_to_overwrite refuses any other): nothing to warn about
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # under DDP: handprop's epoch metrics are torchmetrics' compute(), already over every process
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True\)`")
    logging.captureWarnings(True)
    captured = logging.getLogger("py.warnings")
    if not any(isinstance(f, _OneLine) for f in captured.filters):
        captured.addFilter(_OneLine())


class _OneLine(logging.Filter):
    """A captured warning as one line (warnings' own format ends it with a newline)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = record.getMessage().rstrip()
        record.args = ()
        return True


def percent(value: float) -> str:
    """An accuracy as people read it: 0.982 -> '98.20%'."""
    return f"{100 * value:.2f}%"
