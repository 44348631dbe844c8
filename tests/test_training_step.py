"""Every training step takes its gradient from the hand-written torch.autograd.Function,
called by the autograd engine, on Lightning's public API: the graph behind each gradient,
bitwise the training of the hand-written sweeps called directly, and the settings that
manual optimisation changes."""

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from handprop import functional as HF
from handprop.build import build_data_and_model
from handprop.data import DeviceBatches, to_pixels
from handprop.errors import HandpropError
from handprop.functional.backprop import backward_layers, every_parameter, forward_layers
from handprop.gate import schedule_length
from handprop.module import DigitClassifier
from handprop.train import train

from conftest import bare_trainer, compose_config

QUIET = [
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "callbacks.pictures=null",
    "test=false",
]
RECIPES = {"default": [], "nielsen_ch1": ["experiment=nielsen_ch1"]}
HANDPROP_NODES = {f"{f.__name__}Backward" for f in (HF.MLPFunction, HF.LinearActFunction, HF.CostFunction)}


class WalkTheGraph(Callback):
    """At every optimiser step: from the loss back to every parameter, the graph passes
    through handprop Functions' backward nodes only; and what those nodes' backward
    produced for each parameter is exactly the gradient the optimiser is handed."""

    latest = None  # the instance of the latest run, for the test to read

    def __init__(self):
        self.steps, self.produced = [], {}
        WalkTheGraph.latest = self

    def on_train_start(self, trainer, pl_module):
        self.chunk = pl_module.hparams.chunk

    def on_before_backward(self, trainer, pl_module, loss):
        self.produced = {}
        params = {id(p): p for p in pl_module.net.weights_and_biases()}
        reached = {}  # parameter -> the nodes between the loss and its AccumulateGrad
        stack = [(loss.grad_fn, ())]
        while stack:
            node, path = stack.pop()
            if hasattr(node, "variable"):  # an AccumulateGrad: where a leaf's gradient lands
                reached[id(node.variable)] = path
                continue
            for i, (child, _) in enumerate(node.next_functions):
                if child is not None:
                    stack.append((child, (*path, (node, i))))
        assert reached.keys() == params.keys(), "a parameter the loss does not reach"
        for key, path in reached.items():
            names = [type(node).__name__ for node, _ in path]
            assert path and set(names) <= HANDPROP_NODES, names  # nothing but our Functions
            node, i = path[-1]  # the Function that hands this parameter its gradient
            node.register_hook(lambda grad_inputs, _, key=key, i=i: self.produced.__setitem__(key, grad_inputs[i]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for p in pl_module.net.weights_and_biases():
            assert id(p) in self.produced, "no handprop backward produced this gradient"
            assert torch.equal(p.grad, self.produced[id(p)])
        self.steps.append(trainer.global_step)


@pytest.mark.parametrize("recipe, steps, chunk", [("default", 40, 29), ("nielsen_ch1", 300, 256)])
def test_every_gradient_of_every_step_comes_from_a_handprop_functions_backward(tmp_path, recipe, steps, chunk):
    """The default recipe in chunks of 29 steps, nielsen_ch1 in chunks of 256 (both chosen
    by model.chunk=null): each chunk's every step, across chunk boundaries."""
    cfg = compose_config("train", [*RECIPES[recipe], *QUIET, f"trainer.max_steps={steps}"], tmp_path)
    with open_dict(cfg):
        cfg.callbacks.walk = {"_target_": "test_training_step.WalkTheGraph"}
    train(cfg)
    assert WalkTheGraph.latest.steps == list(range(steps)) and WalkTheGraph.latest.chunk == chunk


class SaveAtEnd(Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


@torch.no_grad()
def engine_free_training(cfg, steps: int):
    """The run's steps with the hand-written sweeps called directly, the autograd engine
    left out -- the forward sweep, the cost and its gradient, the backward sweep -- each
    gradient applied by the run's own optimiser and schedule, the mini-batches, their
    augmentation and dropout masks drawn in the run's order. Returns the model and optimiser."""
    L.seed_everything(cfg.seed, verbose=False)
    dm, model = build_data_and_model(cfg)
    dm.setup("fit")
    model.pixel_mean.fill_(dm.pixel_stats[0])
    model.pixel_std.fill_(dm.pixel_stats[1])
    split = dm.splits["train"]
    loader = DeviceBatches(split.images, split.labels, dm.batch_size, shuffle=True, seed=cfg.data.seed)
    optimizer = model.optimizer_factory(params=model.parameters())
    factory = model.scheduler_factory
    schedule = factory(optimizer, **schedule_length(factory, lambda: steps)) if factory else None
    net, hp = model.net, model.hparams
    params, activations, p = net.weights_and_biases(), net.activations, net.dropout
    wants = every_parameter(len(activations))
    taken, epoch = 0, 0
    while taken < steps:
        loader.set_epoch(epoch)
        epoch += 1
        for images, labels in loader:
            x = model.normalize(to_pixels(images, dm.augment))
            masks = HF.dropout_masks(len(labels), params, p)
            out, saved = forward_layers(x, params, activations, masks, wants)
            _, cost_saved = HF.COSTS[hp.loss].forward(out, labels, hp.label_smoothing)
            g = HF.COSTS[hp.loss].backward(torch.ones(()), cost_saved, hp.label_smoothing)
            for param, grad in zip(params, backward_layers(g, saved, activations, wants)[1]):
                param.grad = grad
            optimizer.step()
            if schedule is not None:
                schedule.step()
            taken += 1
            if taken == steps:
                break
    return model, optimizer


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_training_through_the_engine_is_bitwise_the_sweeps_called_directly(tmp_path, recipe):
    """200 steps of the default recipe (dropout, augmentation, AdamW, one-cycle) and of
    nielsen_ch1 (SGD): parameters and optimiser state bitwise equal, the Function's
    backward running the same functions in the same order as the sweeps called by hand."""
    steps, end = 200, tmp_path / "end.ckpt"
    cfg = compose_config("train", [*RECIPES[recipe], *QUIET, f"trainer.max_steps={steps}"], tmp_path / "run")
    with open_dict(cfg):
        cfg.callbacks.save = {"_target_": "test_training_step.SaveAtEnd", "path": str(end)}
    train(cfg)
    trained = torch.load(end, map_location="cpu", weights_only=True)
    reference = compose_config("train", [*RECIPES[recipe], *QUIET], tmp_path / "reference")
    model, optimizer = engine_free_training(reference, steps)
    assert trained["global_step"] == steps
    for name, value in model.state_dict().items():
        assert torch.equal(trained["state_dict"][name], value), name
    ours, theirs = optimizer.state_dict()["state"], trained["optimizer_states"][0]["state"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        for field, value in ours[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs[key][field])), (key, field)


def test_gradient_clipping_clips_each_steps_gradient_after_the_callbacks_saw_it(tmp_path):
    """model.gradient_clip_val: every step moves the weights by at most that much (plain SGD
    with rate 1: the step is the gradient); the callbacks saw the gradient unclipped."""
    cfg = compose_config(
        "train",
        [*QUIET, "model.hidden=[32]", "trainer.max_steps=6", "model.gradient_clip_val=0.01"]
        + ["optimizer=sgd", "optimizer.lr=1.0", "scheduler=none"],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.norms = {"_target_": "test_training_step.StepSizes"}
    train(cfg)
    seen, taken = StepSizes.seen, StepSizes.taken
    assert len(seen) == len(taken) == 6
    assert all(norm > 0.01 for norm in seen)  # larger: clipping acted
    assert taken == pytest.approx([0.01] * 6, rel=1e-4)


class StepSizes(Callback):
    """The gradient's norm as the callbacks see it, and the length of the step the
    optimiser then takes."""

    seen: list[float] = []
    taken: list[float] = []

    def on_train_start(self, trainer, pl_module):
        StepSizes.seen, StepSizes.taken, self.before = [], [], None
        trainer.optimizers[0].register_step_post_hook(lambda *_: StepSizes.taken.append(self._moved(pl_module)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        StepSizes.seen.append(_flat(p.grad for p in pl_module.parameters()).norm().item())
        self.before = _flat(pl_module.parameters()).clone()

    def _moved(self, pl_module) -> float:
        return (_flat(pl_module.parameters()) - self.before).norm().item()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


@pytest.mark.parametrize(
    "setting, fix",
    [
        ("trainer.gradient_clip_val=1.0", "set model.gradient_clip_val=1.0 instead"),
        ("trainer.accumulate_grad_batches=4", "a mini-batch 4 times as large computes the same gradient"),
    ],
)
def test_lightnings_automatic_optimisation_settings_are_refused_with_the_setting_that_works(tmp_path, setting, fix):
    with pytest.raises(HandpropError, match=f"{setting.replace('.', '[.]')}: handprop's training step .*{fix}"):
        train(compose_config("train", [*QUIET, setting], tmp_path))
    assert not (tmp_path / "checkpoints").exists()


class ProfilerSeen(Callback):
    seen = None

    def on_train_start(self, trainer, pl_module):
        ProfilerSeen.seen = type(trainer.profiler)


@pytest.mark.parametrize("asked, used", [(None, "NoProfiler"), ("simple", "SimpleProfiler")])
def test_lightning_profiles_what_is_asked_and_nothing_else(tmp_path, asked, used):
    """trainer.profiler=null: handprop's NoProfiler, Lightning's do-nothing profiler at a
    tenth of its cost per hook call; a profiler asked for is Lightning's own."""
    setting = [f"trainer.profiler={asked}"] if asked else []
    cfg = compose_config("train", [*QUIET, "model.hidden=[8]", "trainer.max_steps=2", *setting], tmp_path)
    with open_dict(cfg):
        cfg.callbacks.seen = {"_target_": "test_training_step.ProfilerSeen"}
    train(cfg)
    assert ProfilerSeen.seen.__name__ == used


def test_a_data_module_of_plain_batches_trains_one_step_a_batch(tmp_path):
    """A LightningDataModule other than handprop's hands over (pixels, labels) batches: each
    is a chunk of one, through the same training step."""

    class Plain(L.LightningDataModule):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.rand(64, 1, 28, 28, generator=g), torch.arange(64) % 10)
            return torch.utils.data.DataLoader(data, batch_size=16)

    torch.manual_seed(0)
    model = DigitClassifier(hidden=[8], optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    walk = WalkTheGraph()
    trainer = bare_trainer(max_epochs=1, callbacks=[walk])
    trainer.fit(model, datamodule=Plain())
    assert trainer.global_step == 4 and walk.steps == [0, 1, 2, 3]
