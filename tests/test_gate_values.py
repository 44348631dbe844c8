"""Config validation before any work: every key named with its allowed values.

The schema is the code: each ``_target_`` node is checked against the signature of what it
calls (unknown keys, annotated types); handprop's own constructors check their values and
are named by their config key; ``RANGES`` holds the ranges of other libraries' settings;
interpolated values are named once, where they are set."""

import fnmatch
from typing import Literal

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from handprop.build import build
from handprop.callbacks import NumericsGuard
from handprop.errors import ConfigError, HandpropError
from handprop.gate import problems as config_problems
from handprop.gate.signatures import describe, fits, setting_problems
from handprop.gate.values import RANGES
from handprop.gate.values import leaves as _leaves

from conftest import CONF, compose_config, unknown_override_message


@pytest.mark.parametrize(
    "overrides,message",
    [
        # types, from the signatures of the code each node calls
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: must be a positive integer"),
        ("trainer.precision=17", "trainer.precision=17: must be one of 64, 32, 16, 'transformer-engine'"),
        (
            "callbacks.pictures.descent=maybe",
            "callbacks.pictures.descent='maybe': must be true or false (a setting of TensorBoardPictures)",
        ),
        ("model.compile=1", "model.compile=1: must be true or false (a setting of DigitClassifier)"),
        (
            "+optimizer.betas=[0.9]",
            "optimizer.betas=[0.9]: must be a list of 2 values, each a number or Tensor (a setting of AdamW)",
        ),
        ("logger.tensorboard.default_hp_metric=3", "logger.tensorboard.default_hp_metric=3: must be true or false"),
        ("data.download=yes", "data.download='yes': must be true or false"),
        # ranges
        ("scheduler.pct_start=2", "scheduler.pct_start=2: must be a fraction in (0, 1)"),
        ("scheduler=cosine scheduler.T_max=0", "scheduler.T_max=0: must be a positive integer"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1: must be a number >= 0"),
        ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5: must be null (all), a number of batches"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: must be a positive integer"),
        ("trainer.devices=[a]", "trainer.devices=['a']: must be a positive integer, -1 (all), 'auto'"),
        ("data.val_size=-5", "data.val_size=-5: must be a positive integer"),
        ("data.augment.flip=1.5", "data.augment.flip=1.5: must be a probability in [0, 1]"),
        ("data.augment.rotation=-3", "data.augment.rotation=-3: must be a number >= 0"),
        ("callbacks.last_checkpoint.every_n_epochs=0", "callbacks.last_checkpoint.every_n_epochs=0: must be a"),
        ("data.augment=abc", "data.augment='abc': must be a mapping"),
        ("data=mnist data.download=true data.data_dir=null", "data.data_dir=None: is needed for dataset=mnist"),
        (
            "callbacks.interrupt_checkpoint.filename=''",
            "callbacks.interrupt_checkpoint.filename='': must be a file name",
        ),
        ("model.label_smoothing=1", "model.label_smoothing=1: must be a probability in [0, 1)"),
        ("optimizer=sgd optimizer.momentum=1.2", "optimizer.momentum=1.2: must be in [0, 1)"),
        (
            "callbacks.numerics_guard.every_n_steps=0",
            "callbacks.numerics_guard.every_n_steps=0: must be a positive integer",
        ),
        (
            "callbacks.numerics_guard.every_n_steps=null",
            "callbacks.numerics_guard.every_n_steps=None: must be an integer (a setting of NumericsGuard)",
        ),
        ("callbacks.pictures.descent_points=1", "callbacks.pictures.descent_points=1: must be an integer >= 2"),
        ("seed=abc", "seed='abc': must be an integer from 0 to 4294967295, or null"),
        ("seed=-1", "seed=-1: must be an integer from 0 to 4294967295, or null"),
        (
            "trainer.limit_train_batches=0",
            "trainer.limit_train_batches=0: must be null (all), a number of batches >= 1, "
            "or a fraction in (0, 1]: a run must train on something",
        ),
        (
            "model.l2=5.0",
            "model.l2=5.0: is an L2 term of the cost, which AdamW's decoupled weight decay is not: use optimizer=sgd, "
            "or model.l2=0 and optimizer.weight_decay",
        ),
        (
            "optimizer=sgd model.l2=5.0 optimizer.weight_decay=0.01",
            "model.l2=5.0: adds to optimizer.weight_decay=0.01: both decay the weights; set one of them to 0",
        ),
        ("optimizer=sgd model.l2=-1", "model.l2=-1: must be a number >= 0"),
        # choices
        ("trainer.accelerator=tpux", "trainer.accelerator='tpux': must be one of auto, cpu, gpu, cuda"),
        ("trainer.strategy=dpp", "trainer.strategy='dpp': must be one of auto, ddp, ddp_spawn"),
        (
            "model.init=he",
            "model.init='he': must be one of pytorch, normal, normal_scaled, lecun_uniform, efficient_backprop, "
            "xavier, kaiming",
        ),
        ("model.dropout=1.0", "model.dropout=1.0: must be a probability in [0, 1)"),
        ("model.backward=finite", "model.backward='finite': must be one of manual, autograd"),
        ("model.activation=swish", "model.activation='swish': must be one of identity, sigmoid"),
        ("model.output_activation=sigmod", "model.output_activation='sigmod': must be one of identity, sigmoid"),
        ("model.loss=hinge", "model.loss='hinge': must be one of cross_entropy, quadratic"),
        (
            "model.loss=quadratic model.label_smoothing=0.1",
            "model.label_smoothing=0.1: applies to model.loss=cross_entropy only; set it to 0",
        ),
        ("data.dataset=emnist", "data.dataset='emnist': must be one of sample, mnist, fashion_mnist"),
        ("callbacks.gradient_audit.every_n_steps=0", "callbacks.gradient_audit.every_n_steps=0: must be a positive"),
        # unknown keys added with '+' (Hydra lets them through; the code would not take them)
        ("+model.hiden=3", "model.hiden: unknown key. Did you mean model.hidden? model has: hidden, activation,"),
        ("+trainer.max_epoch=3", "trainer.max_epoch: unknown key. Did you mean trainer.max_epochs?"),
        (
            "+data.augment.rotaton=3",
            "data.augment.rotaton: unknown key. Did you mean data.augment.rotation? "
            "data.augment has: rotation, scale, shift, squeeze, shear, flip, elastic, elastic_sigma",
        ),
        ("+data.augment.skew=5", "data.augment.skew: unknown key. data.augment has: rotation, scale,"),
        (
            "+callbacks.training_scalars.foo=1",
            "callbacks.training_scalars.foo: unknown key. callbacks.training_scalars has: every_n_steps",
        ),
    ],
)
def test_each_bad_value_is_one_line_naming_the_key_and_what_is_allowed(drawn_cfg, overrides, message):
    problems = config_problems(drawn_cfg(*overrides.split()))
    assert len(problems) == 1, problems
    assert problems[0].startswith(message), problems[0]


def test_the_list_of_an_unknown_keys_neighbours_leaves_out_what_train_py_passes_in(drawn_cfg):
    (problem,) = config_problems(drawn_cfg("+model.hiden=3"))
    assert "compile" in problem and "optimizer" not in problem and "scheduler" not in problem
    (problem,) = config_problems(drawn_cfg("+optimizer.foo=1"))
    assert problem.endswith(
        "optimizer has: lr, weight_decay, betas, eps, amsgrad, maximize, foreach, capturable, differentiable, fused"
    )


def test_an_interpolated_value_is_named_where_it_is_set(drawn_cfg):
    # scheduler.max_lr is ${optimizer.lr}: one problem, under the key the user typed
    assert config_problems(drawn_cfg("optimizer.lr=abc")) == [
        "optimizer.lr='abc': must be a positive number, e.g. optimizer.lr=0.001"
    ]


def test_problems_come_together_in_the_configs_order(drawn_cfg):
    problems = config_problems(
        drawn_cfg("optimizer.lr=0", "model.hidden=[1.5]", "trainer.precision=17", "data.batch_size=0")
    )
    assert [p.split("=")[0] for p in problems] == [
        "data.batch_size",
        "model.hidden",
        "optimizer.lr",
        "trainer.precision",
    ]


@pytest.mark.parametrize(
    "group,option",
    [
        (p.parent.name, p.stem)
        for p in sorted(CONF.glob("*/*.yaml"))
        if p.parent.name not in ("hydra", "paths", "experiment", "logger", "callbacks")
    ],
)
def test_every_shipped_option_is_valid(drawn_cfg, tmp_path, group, option):
    own_schedule = ["scheduler=none"] if (group, option) == ("optimizer", "sdlm") else []  # (its rate is its own)
    data_dir = [f"data.data_dir={tmp_path}"] if group == "data" and option != "sample" else []
    assert config_problems(drawn_cfg(f"{group}={option}", *data_dir, *own_schedule)) == []


def test_eval_config_is_checked_whole(tmp_path):
    (missing,) = config_problems(compose_config("eval", [], tmp_path))  # a value the config leaves to be given
    assert missing.startswith("ckpt_path: is required (the config leaves it ???): give it, e.g. ckpt_path=outputs/")

    assert config_problems(compose_config("eval", ["ckpt_path=x"], tmp_path)) == []
    assert config_problems(compose_config("eval", ["ckpt_path=x", "trainer.precision=17"], tmp_path))[0].startswith(
        "trainer.precision=17"
    )


class Toy:
    """A stand-in for any class a config node calls: its signature is the schema."""

    def __init__(
        self, size: int, rate: float = 0.1, mode: Literal["a", "b"] = "a", tags: list[str] | None = None, **extra
    ):
        pass


def test_a_new_parameter_is_checked_the_day_it_is_added():
    node = lambda **kw: OmegaConf.create({"toy": {"_target_": f"{__name__}.Toy", **kw}})  # noqa: E731
    assert setting_problems(node(size=3, rate=1, mode="b", tags=["x"])) == []
    assert setting_problems(node(size=3.5, rate="fast", mode="c", tags=[1])) == [
        "toy.size=3.5: must be an integer (a setting of Toy)",
        "toy.rate='fast': must be a number (a setting of Toy)",
        "toy.mode='c': must be one of 'a', 'b' (a setting of Toy)",
        "toy.tags=[1]: must be a list of strings or null (a setting of Toy)",
    ]
    assert setting_problems(node(size=1, anything=2)) == []  # **extra takes any key
    bad = OmegaConf.create({"toy": {"_target_": "no_such_module.Toy"}})
    assert setting_problems(bad)[0].startswith("toy._target_='no_such_module.Toy': cannot be imported")


def test_fits_anddescribe():

    assert fits(3, int) and fits(3, float) and not fits(3.0, int) and not fits(True, int) and not fits(1, bool)
    assert fits(None, int | None) and not fits("x", int | None)
    assert fits([1, 2], tuple[float, float]) and fits([1, 2], tuple[float, ...]) and not fits([1], tuple[float, float])
    assert fits(32, Literal[64, 32]) and not fits("32", Literal[64, 32]) and not fits(True, Literal[1])
    assert fits("x", torch.device) is None and fits(0.1, float | torch.Tensor) is True
    assert fits("x", torch.device | None) is None  # a class a YAML value cannot be checked against: not refused
    assert describe(int | None) == "an integer or null"
    assert describe(Literal["a", "b"] | None) == "one of 'a', 'b' or null"
    assert describe(list[int]) == "a list of integers"


def test_every_range_rule_is_used_by_some_shipped_key(tmp_path):
    """No dead rules: each pattern of RANGES matches a key of the default config or one of its options."""

    keys = set()
    for overrides in ([], ["optimizer=sgd"], ["scheduler=cosine"], ["+optimizer.eps=1e-8", "scheduler.max_lr=0.01"]):
        keys |= {k for k, _ in _leaves(compose_config("train", overrides, tmp_path))}

    unused = [pattern for pattern, _, _ in RANGES if not any(fnmatch.fnmatchcase(k, pattern) for k in keys)]
    assert unused == []


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["model.hidden=[3]", "optimizer.lr=0.1"], None),
        (["model.hidden=[3"], None),  # a syntax error: Hydra shows where
        (["model=cnn"], None),  # a missing option: Hydra lists the options itself
        (["model.hiden=3"], "model.hiden: unknown key. Did you mean model.hidden?"),
        (["seed.x=1"], "seed.x: seed holds no settings to override (it is a single value, or an empty group)"),
        (["model.hidden.x=3"], None),  # a list, not a mapping: Hydra's own message
        (["hydra.job.chdir=abc"], None),  # a wrong type, not a missing key: Hydra's own message
        (
            ["-m", "optimizer.lr=0.1,0.2", "modle.hidden=[3]"],
            "modle: unknown key. Did you mean model? The config has: seed,",
        ),
        (["callbacks.picture.every_n_epochs=3"], "callbacks.picture: unknown key. Did you mean callbacks.pictures?"),
        (
            ["trainer.min_epochs=3"],
            "trainer.min_epochs: not in the config, but Trainer takes it: add it with a '+', +trainer.min_epochs=3",
        ),
    ],
)
def test_overrides_of_keys_not_in_the_config(argv, expected):
    message = unknown_override_message(argv)
    assert message == expected if expected is None else message.startswith(expected), message


def test_what_only_building_finds_is_named_by_its_key_and_any_other_error_is_a_bug(monkeypatch):
    """Lightning refusing what this machine cannot do is a config error under its key; in
    handprop's own code an exception while building is a bug: it keeps its traceback."""
    node = OmegaConf.create({"_target_": "lightning.Trainer", "accelerator": "gpu", "devices": 1})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="(?i)^trainer: .*gpu"):
            build("trainer", node)

    def broken(self, every_n_steps=10):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(NumericsGuard, "__init__", broken)
    with pytest.raises(InstantiationException) as bug:
        build("callbacks.numerics_guard", OmegaConf.create({"_target_": "handprop.callbacks.NumericsGuard"}))
    assert not isinstance(bug.value, HandpropError) and isinstance(bug.value.__cause__, ValueError)


def test_the_gate_builds_nothing(drawn_cfg):
    # 1e10 weights would take 40 GB: the gate reads the config, it builds no model
    assert config_problems(drawn_cfg("model.hidden=[100000,100000]")) == []
    (problem,) = config_problems(drawn_cfg("model.hidden=[100000,100000]", "model.init=he"))
    assert problem.startswith("model.init='he': must be one of pytorch,")
