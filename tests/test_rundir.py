"""One run per directory, the rank that owns it, and commands that paste: real processes."""

import re

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from handprop import rundir
from handprop.rundir import command_line, hydra_value, launch_problem, launched_rank, recorded_overrides, unique_dir

from conftest import ROOT, run_cli, run_printed, signal_when, small_filesystem, start_train, wait_for

QUICK = [
    "model.hidden=[16]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "callbacks.pictures=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "test=false",
]
LONG = [*QUICK[:1], "trainer.max_epochs=300", *QUICK[2:]]


def test_unique_dir_claims_a_fresh_directory_each_time(tmp_path):
    base = str(tmp_path / "2026-01-01" / "12-00-00")
    first = unique_dir(base)
    assert first == base and unique_dir(base) == base  # the same answer within a process

    rundir._claimed.clear()  # as another process would see it
    assert unique_dir(base) == base + "-1"


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """A shell loop over seeds starts runs within one second: each gets its own directory
    (forced here onto one name), with its own metrics.json."""
    same = f"hydra.run.dir=${{unique_dir:'{tmp_path}/run'}}"
    procs = [start_train(*QUICK, f"seed={seed}", same) for seed in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["run", "run-1"]
    seeds = {OmegaConf.load(tmp_path / r / ".hydra" / "config.yaml").seed for r in runs}
    assert seeds == {1, 2} and all((tmp_path / r / "metrics.json").is_file() for r in runs)


def test_a_second_process_in_a_running_runs_directory_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    first = start_train(*LONG, f"hydra.run.dir={run_dir}")
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", first)  # under way, an epoch written
        config = (run_dir / ".hydra" / "config.yaml").read_bytes()
        second = run_cli("train.py", *QUICK, "seed=7", f"hydra.run.dir={run_dir}")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]  # one line
        assert f"error: {run_dir} is in use by another run (pid {first.pid} on " in second.stderr
        assert "python train.py 'model.hidden=[16]' trainer.max_epochs=300" in second.stderr  # the holder's command
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config  # nothing of the first run touched
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_a_refused_run_writes_nothing_into_the_old_runs_directory(tmp_path):
    run_dir, tmpdir = tmp_path / "run", tmp_path / "tmpdir"
    tmpdir.mkdir()
    assert run_cli("train.py", *QUICK, f"hydra.run.dir={run_dir}", env={"TMPDIR": str(tmpdir)}).returncode == 0
    assert not list(tmpdir.iterdir())  # checkpoints are written beside themselves, not through $TMPDIR
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_cli("train.py", *QUICK, "model.hidden=[32]", f"hydra.run.dir={run_dir}")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"error: {run_dir / 'checkpoints'} already holds checkpoints of another run" in again.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # .hydra/config.yaml and overrides.yaml included


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "SLURM_PROCID"])
def test_a_stray_rank_variable_in_a_single_process_is_named(tmp_path, variable):
    proc = run_cli("train.py", *QUICK, f"hydra.run.dir={tmp_path}/run", env={variable: "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.startswith(
            f"error: {variable}=1 is set in the environment, but no launcher started several processes"
        )
        and f"env -u {variable} python" in proc.stderr
    )
    assert not (tmp_path / "run").exists()


def test_the_rank_comes_from_the_launcher_in_use():
    assert launched_rank({}) == 0 and launch_problem({}) is None
    assert launched_rank({"RANK": "3", "WORLD_SIZE": "4"}) == 3  # torchrun
    assert launched_rank({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == 2  # srun
    assert launched_rank({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == 1  # Lightning's own launcher
    assert launched_rank({"LOCAL_RANK": "0", "RANK": "0"}) == 0 and launch_problem({"LOCAL_RANK": "0"}) is None
    assert launch_problem({"SLURM_PROCID": "1", "SLURM_NTASKS": "1"}).startswith("SLURM_PROCID=1 is set")


def test_a_read_only_run_directory_is_one_line(tmp_path):
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as ro:
        given = run_cli("train.py", *QUICK, f"hydra.run.dir={ro}/run")
        default = run_cli("train.py", *QUICK, f"paths.log_dir={ro}/outputs")  # the default <date>/<time> under it
    assert given.returncode == 2 and default.returncode == 2
    assert given.stderr.strip() == (
        f"error: cannot write the run directory {ro}/run: Read-only file system. "
        "Choose a writable one with hydra.run.dir=DIR"
    )
    assert default.stderr.strip().startswith(f"error: cannot create the run directory {ro}/outputs/")
    assert len(default.stderr.strip().splitlines()) == 1


def test_processes_of_a_launch_need_one_shared_directory(tmp_path):
    """Under torchrun or srun every process resolves its own default directory (its own
    second, its own -1): the launch must name one."""
    proc = run_cli(
        "train.py", *QUICK, f"paths.log_dir={tmp_path}", env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: a launcher started 2 processes: give them all the same (shared) directory "
        "with hydra.run.dir=DIR, or each picks its own"
    )


def test_a_full_disk_during_training_is_one_line_and_keeps_what_was_written(tmp_path):
    """The run's log, config and TensorBoard files fit; the Backprop tab's digits (400 KB)
    or a checkpoint of a 784-400-10 network (1.3 MB) do not."""
    with small_filesystem(tmp_path / "disk", "400k") as disk:
        proc = run_cli("train.py", *QUICK, "model.hidden=[400]", f"hydra.run.dir={disk}/run")
        files = sorted(p.relative_to(disk).as_posix() for p in disk.rglob("*") if p.is_file())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]  # one line, the last
    assert errors[0].startswith(f"error: no space left on {disk}/run/backprop: digits.pt was not written")
    assert "run/.hydra/config.yaml" in files and not any(f.endswith(".tmp") for f in files)
    assert not any(f.endswith((".ckpt", ".pt")) for f in files)  # nothing truncated


@pytest.mark.parametrize(
    "value",
    [
        "outputs/2026-11-29/18-00-00",
        "/tmp/it's a $HOME ${x} ü",
        "/runs/a,b",
        "~x",
        "a\\b",
        "ends\\",
        "x\\'y",
        "[1,2]",
        "null",
        "a=b",
        "tab\tand space",
    ],
)
def test_hydra_values_read_back_as_written(value):
    override = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_value(value)}")
    assert OmegaConf.create({"v": override.value()}).v == value  # through Hydra's grammar, then OmegaConf


def test_hydra_values_quote_what_the_grammar_would_misread():
    assert hydra_value("outputs/2026-11-29/18-00-00") == "outputs/2026-11-29/18-00-00"
    assert hydra_value("/tmp/it's a $HOME ${x} ü") == "'/tmp/it\\'s a $HOME \\${x} ü'"
    line = command_line("train.py", ["model.hidden=[16]"], ckpt_path="/tmp/a b/last.ckpt")
    assert line == "python train.py 'model.hidden=[16]' 'ckpt_path='\"'\"'/tmp/a b/last.ckpt'\"'\"''"


def test_a_run_directory_named_with_spaces_quotes_dollars_and_accents_resumes_as_printed(tmp_path):
    """The printed command pastes into a shell and resumes; every file of the run, the
    TensorBoard events included ($HOME is not expanded), stays inside its directory."""
    run_dir = tmp_path / "it's a $HOME run, ü"
    # some epochs on: the resume below trains two more steps of a schedule long enough
    returncode, stderr = signal_when(
        run_dir / "checkpoints" / "last.ckpt", *LONG, f"hydra.run.dir={hydra_value(str(run_dir))}", settle=1.0
    )
    assert returncode == 130, stderr[-3000:]
    first_config = (run_dir / ".hydra" / "overrides.yaml").read_text()
    command = stderr.split("Resume with:\n", 1)[1].strip().splitlines()[0]
    step = int(re.search(r"training stopped in epoch \d+, after step (\d+)", stderr).group(1))
    resumed = run_printed(command, f"trainer.max_steps={step + 2}")
    assert resumed.returncode == 0, (command, resumed.stderr[-3000:])
    assert (run_dir / ".hydra" / "history" / "1" / "overrides.yaml").read_text() == first_config  # kept
    assert "ckpt_path=" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events and all(run_dir in e.parents for e in events)
    assert not list((ROOT / "outputs").glob("**/it's a*")) and sorted(p.name for p in tmp_path.iterdir()) == [
        run_dir.name
    ]


def test_recorded_overrides_are_read_as_typed(tmp_path):
    """An override whose value holds an interpolation is text in the record, not something
    to resolve: read by OmegaConf it failed ("Index 'paths' (str) is not an int") and took
    the run down before it started."""
    (tmp_path / ".hydra").mkdir()
    typed = ["+callbacks.snap.dirpath=${paths.output_dir}/snaps", "model.hidden=[64,32]", "seed=3"]
    (tmp_path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in typed))
    assert recorded_overrides(tmp_path) == typed
    assert recorded_overrides(tmp_path / "elsewhere") == []
