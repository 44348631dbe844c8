"""Reading a checkpoint without running code, and checking it before anything is built from it.

Reading. ``read_checkpoint`` loads with ``weights_only=True`` (only tensors and plain
data are unpickled: a file whose pickle would build other objects is refused before any
of it runs) and then checks what it holds before anything is built from it: a
``state_dict`` of finite tensors, hyper-parameters that build a network (on the meta
device: no memory) of exactly the stored shapes, and -- for a resume or a start from
weights -- the same network as this run's.
"""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import torch

from .errors import CheckpointError
from .module import DigitClassifier

# The model settings that make a network compute a different function from the same
# weights: a start from weights (init_from) must keep them.
FUNCTION_SETTINGS = ("input_size", "hidden", "num_classes", "activation", "output_activation", "normalize")
# ... and a resume continues the same training: the same cost and regularisation too.
# (backward, compile and init may change: the same math, the weights come from the file.)
RESUME_SETTINGS = (*FUNCTION_SETTINGS, "loss", "label_smoothing", "dropout", "l2")


def read_checkpoint(
    path: str | Path, against=None, same: tuple[str, ...] = RESUME_SETTINGS, option: str | None = "ckpt_path"
) -> dict:
    """Load a checkpoint safely and make sure it is a handprop checkpoint whose contents
    fit together (see the module's docstring). With ``against`` (this run's
    DigitClassifier), also that it holds the same network: every parameter's shape, and
    the model settings named in ``same``. ``option``: the setting that named the file, for
    the messages (None: the path alone, as a command-line argument)."""
    path = Path(path)
    what = f"{option}={path}" if option else str(path)
    if not path.exists():
        raise CheckpointError(f"{what}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{what}: not a regular file (a directory, a pipe or a device); give a .ckpt file")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise CheckpointError(f"{what} is not a handprop checkpoint (cannot be read: the file is empty)")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
        raise CheckpointError(
            f"{what} is not a handprop checkpoint (cannot be read: not a file torch.save writes; "
            f"it starts with the bytes {head.hex(' ')})"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if not unsafe:  # not a pickle torch.save writes
            found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(e))
            raise CheckpointError(
                f"{what} is not a handprop checkpoint (cannot be read: not a file torch.save "
                f"writes{': ' + found.group(1) if found else ''})"
            ) from None
        names = re.findall(r"GLOBAL (\S+?)[.,]?(?:\s|$)", unsafe[0])
        raise CheckpointError(
            f"{what}: refused to load: the file holds Python objects other than tensors and plain "
            f"data (it asks for {', '.join(names) or 'an unknown global'}), which could run code while loading. "
            "handprop's own checkpoints never do; load only checkpoints you made or trust."
        ) from None
    except Exception as e:  # truncated, a damaged zip, ...
        raise CheckpointError(
            f"{what} is not a handprop checkpoint (cannot be read: {_reason(e)}); "
            "it may be truncated or damaged: use another checkpoint of the run"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise CheckpointError(f"{what} is not a handprop checkpoint (no state_dict and hyper_parameters)")
    state, hp = checkpoint["state_dict"], checkpoint["hyper_parameters"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} is not a handprop checkpoint (its state_dict is not a set of tensors)")
    if not isinstance(hp, dict):
        raise CheckpointError(f"{what} is not a handprop checkpoint (its hyper_parameters are not a mapping)")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(
            f"{what} holds weights that are NaN or infinite ({', '.join(broken)}): it was saved "
            "from a diverged run. Use an earlier checkpoint of that run."
        )
    model = _model_on_meta(what, hp)
    _compare_shapes(
        what,
        "the network its hyper_parameters describe",
        model.state_dict(),
        state,
        "the file was edited or damaged; use an intact checkpoint",
    )
    if against is not None:
        _compare_shapes(
            what,
            "this run's network",
            against.state_dict(),
            state,
            "use the checkpoint's own model settings: " + _settings_hint(hp),
        )
        _compare_settings(what, against, hp, same)
    return checkpoint


def _reason(e: Exception) -> str:
    """An exception's first line, without torch's advice to load files unsafely."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "damaged file" if "weights_only" in first else first.rstrip(".")


def model_from_checkpoint(checkpoint: dict):
    """The DigitClassifier a checkpoint that ``read_checkpoint`` returned holds: built from
    its hyper-parameters and loaded with its weights (the file is not read again)."""
    model = DigitClassifier(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def _model_on_meta(what: str, hp: dict):
    """The network the hyper-parameters describe, checked by the config gate's rules for
    the model's settings and built on the meta device: no memory is allocated whatever
    sizes it names."""
    from .gate.values import own_problems, own_rules  # noqa: PLC0415 -- (the gate's rules import the model)

    known = inspect.signature(DigitClassifier).parameters
    unknown = sorted(set(hp) - set(known))
    if unknown:
        raise CheckpointError(
            f"{what}: its hyper_parameters have keys this version of handprop does not know "
            f"({', '.join(unknown)}); use a checkpoint handprop wrote"
        )
    refused = own_problems(own_rules()[DigitClassifier], hp)
    if refused:
        raise CheckpointError(
            f"{what}: its hyper_parameters do not describe a handprop network ({'; '.join(refused)}); "
            "the file was edited or damaged"
        )
    try:
        with torch.device("meta"):
            return DigitClassifier(**hp)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{what}: its hyper_parameters do not describe a handprop network ({e}); the file was edited or damaged"
        ) from None


def _compare_shapes(what: str, whose: str, ours: dict, theirs: dict, fix: str) -> None:
    problems = [
        f"{k}: checkpoint {tuple(theirs[k].shape)}, {whose} {tuple(v.shape)}"
        for k, v in ours.items()
        if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    problems += [f"{k}: missing from the checkpoint" for k in ours if k not in theirs]
    problems += [f"{k}: in the checkpoint, not in {whose}" for k in theirs if k not in ours]
    if problems:
        raise CheckpointError(
            f"{what} holds a different network than {whose}:\n  "
            + "\n  ".join(problems)
            + f"\n{fix[0].upper()}{fix[1:]}"
        )


def _settings_hint(hp: dict) -> str:
    return " ".join(f"model.{k}={_override_value(hp[k])}" for k in ("hidden", "activation") if k in hp)


def _override_value(value) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def _compare_settings(what: str, model, hp: dict, keys: tuple[str, ...]) -> None:
    defaults = {k: p.default for k, p in inspect.signature(type(model)).parameters.items()}
    differ = []
    for key in keys:
        theirs, ours = hp.get(key, defaults.get(key)), model.hparams.get(key, defaults.get(key))
        if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
            theirs, ours = list(theirs), list(ours)
        if theirs != ours:
            differ.append((key, theirs, ours))
    if differ:
        lines = [f"model.{k}: checkpoint {_override_value(t)}, this run {_override_value(o)}" for k, t, o in differ]
        fix = " ".join(f"model.{k}={_override_value(t)}" for k, t, _ in differ)
        raise CheckpointError(
            f"{what} was trained with other model settings than this run's:\n  "
            + "\n  ".join(lines)
            + f"\nRun with the checkpoint's settings ({fix}), or train a new network."
        )


def check_same_recipe(path: str | Path, checkpoint: dict, model) -> None:
    """A resume restores the checkpoint's optimiser and schedule states into this run's
    optimiser and schedule, which must be of the same kinds: a OneCycleLR state loaded
    into a cosine schedule, or no schedule where there was one (the rate frozen at its
    last, annealed value), silently trains something else."""
    recorded = checkpoint.get("recipe")
    if not isinstance(recorded, dict):
        return  # a checkpoint from before recipes were recorded
    ours = model.training_recipe()
    differ = [
        f"{k}: checkpoint {recorded.get(k) or 'none'}, this run {ours[k] or 'none'}"
        for k in ours
        if recorded.get(k) != ours[k]
    ]
    if differ:
        raise CheckpointError(
            f"ckpt_path={path} trained with another optimiser or schedule than this run's ({'; '.join(differ)}): "
            "a resume continues the checkpoint's own, whose state fits no other. Resume with the optimizer= and "
            "scheduler= of the run that wrote it (its .hydra/overrides.yaml), or train on from these weights with a "
            f"fresh optimiser and schedule in a new run: init_from={path} (instead of ckpt_path)"
        )
