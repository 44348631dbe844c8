"""What a run tells its user: the console, train.log, metrics.csv, TensorBoard's tags and
HParams, eval.py's log."""

import csv
import json
import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from handprop.loggers import HPARAMS, HPARAMS_METRICS, asked_hparams, trial_name
from handprop.train import summary, train

from conftest import DRAWN, FAST, compose_config, run_cli, tensorboard_run

EPOCH_LINE = re.compile(
    r"epoch (\d+)/(\d+)  train loss ([\d.]+) acc ([\d.]+)% \| val loss ([\d.]+) acc ([\d.]+)% "
    r"\| lr ([\d.e+-]+) \| ([\d.]+) s, ([\d,]+) digits/s"
)
LIGHTNING_CHATTER = ["GPU available", "TPU available", "Tip:", "LeafSpec", "v_num", "Test metric", "Loading `"]


def csv_columns(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {column: [(step, value), ...]}, empty cells left out."""
    columns: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key != "step" and value != "":
                    columns.setdefault(key, []).append((int(row["step"]), float(value)))
    return columns


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``python train.py`` for three epochs of a small network, as a user runs it (stdout not a terminal)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["model.hidden=[32]", "trainer.max_epochs=3", "trainer.accelerator=cpu", "callbacks.pictures=null"]
    proc = run_cli("train.py", *args, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, json.loads((out / "metrics.json").read_text())


def test_the_console_starts_with_the_run_directory_and_stays_quiet(cli_run):
    out, proc, _ = cli_run
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run directory: {out}"
    assert lines[1] == "train.py model.hidden=[32] trainer.max_epochs=3 trainer.accelerator=cpu callbacks.pictures=null"
    assert "  layer 1: Linear(784 -> 32, relu), then dropout 0.25  [25,120]" in lines
    assert "  layer 2: Linear(32 -> 10, identity)  [330]" in lines
    for chatter in LIGHTNING_CHATTER:
        assert chatter not in proc.stdout + proc.stderr, chatter
    # no terminal: no bar, the epoch lines instead
    assert [int(m.group(1)) for m in map(EPOCH_LINE.search, lines) if m] == [1, 2, 3]
    assert "%|" not in proc.stdout + proc.stderr


def test_train_log_has_a_line_per_epoch_and_the_summary(cli_run):
    out, proc, metrics = cli_run
    log = (out / "train.log").read_text()
    assert re.match(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d INFO    run directory: {re.escape(str(out))}\n", log)
    epochs = [m.groups() for m in EPOCH_LINE.finditer(log)]
    assert [(int(e[0]), int(e[1])) for e in epochs] == [(1, 3), (2, 3), (3, 3)]
    last = epochs[-1]
    assert float(last[2]) == pytest.approx(metrics["train/loss_epoch"], abs=5e-4)
    assert float(last[3]) == pytest.approx(100 * metrics["train/acc"], abs=5e-3)
    assert float(last[4]) == pytest.approx(metrics["val/loss"], abs=5e-4)
    assert float(last[5]) == pytest.approx(100 * metrics["val/acc"], abs=5e-3)
    assert all(float(e[7]) > 0 and int(e[8].replace(",", "")) > 0 for e in epochs)

    test = re.search(r"test accuracy +([\d.]+)% +\(loss ([\d.]+)\)", log)
    assert float(test.group(1)) == pytest.approx(100 * metrics["test/acc"], abs=5e-3)
    best = re.search(r"best val acc +([\d.]+)% at epoch (\d+)", log)
    assert float(best.group(1)) == pytest.approx(100 * metrics["val/acc_best"], abs=5e-3)
    path = Path(re.search(r"best checkpoint +(\S+)", log).group(1))
    assert path.is_file() and path.parent == out / "checkpoints"
    assert path.name.startswith(f"epoch{int(best.group(2)):03d}-")  # 1-based in the file name too
    best_epoch_line = epochs[int(best.group(2)) - 1]
    assert float(best_epoch_line[5]) == pytest.approx(100 * metrics["val/acc_best"], abs=5e-3)
    assert re.search(r"time +[\d.]+ s, [\d.]+ s of it fitting", log)
    assert f"tensorboard --logdir {out}" in log
    assert log.count("test accuracy") == 1 and "test accuracy" in proc.stdout  # the same block on the console


def test_metrics_csv_records_every_scalar_and_ends_where_metrics_json_does(cli_run):
    out, _, metrics = cli_run
    columns = csv_columns(out / "metrics.csv")
    assert {"train/loss_step", "train/lr", "train/acc", "val/acc", "val/acc_best", "test/acc", "wall/epoch_s"} <= set(
        columns
    )
    assert "epoch" not in columns
    assert len(columns["val/acc"]) == 3 and len(columns["train/loss_step"]) > 3
    for key, value in metrics.items():
        if key in columns:
            assert columns[key][-1][1] == pytest.approx(value, rel=1e-6), key


def test_eval_says_what_it_evaluated_and_logs_to_eval_log(cli_run, tmp_path):
    out, _, metrics = cli_run
    best = next((out / "checkpoints").glob("epoch*.ckpt"))
    proc = run_cli("eval.py", f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 'eval'}", "trainer.accelerator=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.log")) == ["eval.log"]
    log = (tmp_path / "eval" / "eval.log").read_text()
    epoch = int(best.name[5:8])
    assert f"evaluating {best} (epoch {epoch}, step {32 * epoch}) on the test split of sample: 500 digits" in log
    accuracy = re.search(r"test accuracy ([\d.]+)% \(loss ([\d.]+)\)", log)
    assert float(accuracy.group(1)) == pytest.approx(100 * metrics["test/acc"], abs=5e-3)  # the run's own test
    for chatter in LIGHTNING_CHATTER:
        assert chatter not in proc.stdout + proc.stderr, chatter


@pytest.mark.parametrize(
    "overrides",
    [
        ["scheduler=onecycle"],
        ["scheduler=cosine"],
        ["scheduler=none", "optimizer=sgd"],
    ],
    ids=lambda o: o[0],
)
def test_tensorboard_charts_the_curves_not_counters_or_single_points(tmp_path, overrides):
    train(compose_config("train", [*FAST, "model.hidden=[16]", *overrides], tmp_path))
    events = EventAccumulator(str(tensorboard_run(tmp_path)))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/lr", "train/loss_step", "train/acc", "val/acc", "val/acc_best"} <= tags
    assert [e.step for e in events.Scalars("train/lr")] == list(range(8))  # every step (log_every_n_steps=1)
    unwanted = [t for t in tags if t == "epoch" or t.startswith(("final/", "trainer/", "lr-", "test/", "hp_metric"))]
    assert not unwanted
    # sections after train/ and val/: TensorBoard opens the first two (sorted) on its landing page
    assert sorted({t.split("/")[0] for t in tags})[:2] == ["train", "val"]


def test_hparams_hold_the_settings_that_define_a_run(tmp_path):
    cfg = compose_config("train", [*FAST, "model.hidden=[16]", "optimizer.lr=0.002"], tmp_path)
    metrics = train(cfg)
    events = EventAccumulator(str(tensorboard_run(tmp_path)))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert set(session.hparams) == set(HPARAMS) and 10 <= len(session.hparams) <= 20
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in session.hparams.items()}
    assert values["architecture"] == "784-16-10" and values["cost"] == "cross_entropy"
    assert values["lr"] == pytest.approx(0.002) and values["optimizer"] == "AdamW"
    assert values["scheduler"] == "OneCycleLR" and values["seed"] == 42 and values["data"] == "sample"
    assert values["distortion"] == "rotation=10 scale=0.1 shift=2 elastic=2" and values["gradients"] == "manual"
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)
    assert session.group_name == tmp_path.name  # (a run directory <date>/<time> reads "MM-DD HH:MM:SS")
    # the metrics' values are their curves' last points
    assert events.Scalars("val/acc_best")[-1].value == pytest.approx(metrics["val/acc_best"])
    summary = events.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "test accuracy" in summary and "best checkpoint" in summary


def test_hparams_show_the_settings_given_on_the_command_line_first(cli_run):
    out = cli_run[0]
    events = EventAccumulator(str(tensorboard_run(out)))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert {i.name for i in experiment.hparam_infos if i.differs} == {"architecture", "epochs"}
    assert asked_hparams(["model.hidden=[64]", "optimizer=sgd", "+trainer.foo=1", "seed=3"]) == {
        "architecture",
        "optimizer",
        "lr",
        "weight_decay",
        "seed",
    }


def test_trial_names_are_short_enough_for_the_hparams_table():
    assert trial_name("/home/you/handprop/outputs/2026-11-30/01-41-07") == "11-30 01:41:07"
    assert trial_name("outputs/2026-11-30/01-41-07-2") == "11-30 01:41:07-2"  # a second run in the same second
    assert trial_name("outputs/multirun/2026-11-30/01-41-07/3") == "11-30 01:41:07 #3"
    assert trial_name("/scratch/my-run") == "my-run"


def test_a_resumed_run_continues_its_metrics_csv(tmp_path):
    common = [*FAST, "model.hidden=[16]", "scheduler=none"]  # (a schedule's length is the run's: resumed as it was)
    first = train(compose_config("train", common, tmp_path))
    before = csv_columns(tmp_path / "metrics.csv")
    resume = [*common, "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"]
    train(compose_config("train", resume, tmp_path))
    after = csv_columns(tmp_path / "metrics.csv")
    assert [s for s, _ in after["val/acc"]] == [3, 7, 11]  # the first run's two epochs kept, the third added
    assert after["val/acc"][:2] == before["val/acc"] and before["val/acc"][-1][1] == pytest.approx(first["val/acc"])


def test_an_error_is_in_train_log_as_on_the_console(tmp_path):
    """A run that fails once started (a dataset directory without the files) says why in its
    log as on the console. (A config the gate refuses makes no run directory: test_cli.)"""
    (tmp_path / "empty").mkdir()
    proc = run_cli("train.py", "data=mnist", f"data.data_dir={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr[proc.stderr.index("error: ") :].strip()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "MNIST" in message and f"ERROR   {message}\n" in log
    assert log.startswith(log[:19] + " INFO    run directory: ")


def test_an_epoch_without_validation_says_nothing_of_val(tmp_path, caplog):
    with caplog.at_level("INFO", logger="handprop.run"):
        train(
            compose_config(
                "train",
                [*FAST, "model.hidden=[8]", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"],
                tmp_path,
            )
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert ["| val loss" in line for line in lines] == [False, True, False]


def test_a_run_stopped_by_max_steps_leaves_its_latest_pictures(tmp_path):
    overrides = [
        *DRAWN,
        "model.hidden=[8]",
        "trainer.max_epochs=-1",
        "trainer.max_steps=6",
        "callbacks.pictures.every_n_epochs=1",
        "callbacks.pictures.descent_points=3",
    ]
    train(compose_config("train", overrides, tmp_path))
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [
        "backprop.png",
        "confusion_matrix.png",
        "descent.png",
        "first_layer_weights.png",
        "mistakes.png",
    ]


def test_a_resumed_run_without_overrides_keeps_its_one_tensorboard_run(tmp_path, caplog):
    common = [*FAST, "model.hidden=[8]", "scheduler=none"]
    train(compose_config("train", [*common, "logger.tensorboard.version=''"], tmp_path))  # as a run without overrides
    resume = [*common, "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"]
    with caplog.at_level("INFO", logger="handprop"):
        train(compose_config("train", resume, tmp_path))
    assert {p.parent for p in tmp_path.rglob("events.out.tfevents.*")} == {tmp_path}
    assert f"resuming the run of {tmp_path / 'checkpoints' / 'last.ckpt'}" in caplog.text


def test_the_summary_names_only_what_the_run_wrote():
    metrics = {"test/acc": 0.98, "test/loss": 0.5, "val/acc_best": 0.99, "time/fit_s": 3.0}
    full = summary(metrics, "/r/checkpoints/epoch002.ckpt", 2, 4.0, "/r")
    assert "best val acc     99.00% at epoch 2" in full and "(and metrics.csv)" in full
    assert "tensorboard --logdir /r" in full
    bare = summary(metrics, "/r/checkpoints/epoch002.ckpt", 2, 4.0, "/r", loggers=())
    assert "metrics.csv" not in bare and "tensorboard" not in bare and "test accuracy    98.00%" in bare
