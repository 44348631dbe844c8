"""Every command in the README and docs/ runs as written.

The README's commands run for real (train.py lines with debug=fast added, each in a
directory of its own; ``outputs/<run>`` stands for a real run's directory). The manual's
train.py lines, many of them long runs or for other machines (a GPU, a cluster), are
composed as train.py composes them and their config checked, as a run does before any
work: a stale key, option or value fails here.
"""

import shlex
from pathlib import Path

import pytest

from handprop.compose import compose
from handprop.gate import check as check_config
from handprop.rundir import override_parser

from conftest import LEAN, ROOT, run_cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = ("DIR", "...", "$", "data.data_dir=data")  # a directory the reader fills in


def commands(path: Path) -> list[str]:
    """The command lines of a Markdown file's ```bash blocks, continuations joined, comments dropped."""
    found, block, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash" and not block
            continue
        if not block:
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if words and words[0] in ("python", "make", "torchrun", "srun"):
            found.append(shlex.join(words))
    return found


ALL = [(path.relative_to(ROOT).as_posix(), command) for path in DOCS for command in commands(path)]
README = [c for p, c in ALL if p == "README.md" and c.startswith("python ")]
MANUAL_TRAIN = sorted({c for p, c in ALL if p != "README.md" and c.startswith("python train.py")} - set(README))
# what runs here as written: not a dataset directory the reader fills in (composed below)
RUNNABLE = [c for c in README if not any(p in c for p in PLACEHOLDERS)]


def test_the_docs_commands_are_found_where_a_reader_sees_them():
    """The checks below see the commands the reader is told to run: the README's way in and
    the manual's resume (a code block the extraction missed would go unchecked)."""
    assert "python train.py experiment=3b1b" in RUNNABLE
    assert any(c.startswith("python train.py ckpt_path=") for c in MANUAL_TRAIN + README)
    assert {"predict.py", "eval.py", "explain.py"} <= {c.split()[1] for c in README}


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    """A short default run: what the README's ``outputs/<run>`` stands for."""
    run = tmp_path_factory.mktemp("docs") / "run"
    proc = run_cli("train.py", "debug=fast", "trainer.accelerator=cpu", *LEAN, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE)
def test_the_readme_commands_run(command, a_run, tmp_path):
    words = shlex.split(command.replace("outputs/<run>", str(a_run)))
    script, args = words[1], words[2:]
    if script == "train.py":
        where = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
        # (debug=fast's two short epochs also where the command asks for more: its values are checked all the same;
        # the pictures and the Backprop tab only for the lesson's network, the learner's way in)
        lean = [] if command == "python train.py experiment=3b1b" else LEAN
        args += ["debug=fast", "trainer.max_epochs=2", "trainer.accelerator=cpu", *lean, f"{where}={tmp_path / 'out'}"]
    elif script == "eval.py":
        args += ["trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'out'}"]
    elif script == "explain.py":  # the picture goes to the test's directory, not the reader's
        args[args.index("--out") + 1] = str(tmp_path / "seven.png")
    proc = run_cli(script, *args)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "error" not in proc.stderr.lower(), proc.stderr[-2000:]
    if script == "predict.py":
        assert proc.stdout.startswith("docs/examples/digit_7.png: ")
    if script == "explain.py":
        assert (tmp_path / "seven.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("command", MANUAL_TRAIN + [c for c in README if c.startswith("python train.py")])
def test_the_manual_commands_compose(command, tmp_path):
    """As train.py composes them (a sweep's first value of each list), and checked as a run
    checks its config first; a placeholder directory is not checked for existence."""
    command = command.replace("outputs/<run>", "outputs/RUN")
    args = [a for a in shlex.split(command)[2:] if a not in ("-m", "--multirun")]
    if "--cfg" in args:
        args = args[: args.index("--cfg")]
    overrides = []
    for override in override_parser().parse_overrides(args):
        if override.is_sweep_override():
            value = next(override.sweep_string_iterator())
            overrides.append(f"{override.get_key_element()}={value}")
        else:
            overrides.append(override.input_line)
    cfg = compose(overrides, tmp_path)
    if not any(p in command for p in (*PLACEHOLDERS, "/usr/share/datasets", "outputs/")):
        check_config(cfg)
