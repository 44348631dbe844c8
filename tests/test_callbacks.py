"""The gradient audit: it logs agreement on live batches and stops a run whose backward is wrong."""

import dataclasses
import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from handprop import functional as HF
from handprop.callbacks import GradientAudit, TrainingScalars
from handprop.data import DigitsDataModule
from handprop.errors import HandpropError
from handprop.module import DigitClassifier
from handprop.train import train

from conftest import tensorboard_run


def _audit_values(run_dir):
    events = EventAccumulator(str(tensorboard_run(run_dir)))
    events.Reload()
    return {t: [e.value for e in events.Scalars(t)] for t in events.Tags()["scalars"] if t.startswith("vs_autograd/")}


def test_audit_logs_tiny_errors_for_the_real_backward(train_cfg, tmp_path):
    train(train_cfg("callbacks.gradient_audit.every_n_steps=2"))
    values = _audit_values(tmp_path)
    assert set(values) == {f"vs_autograd/max_rel_err/layer{i}" for i in (1, 2, 3)}
    assert all(len(v) == 4 for v in values.values())  # 8 steps, every 2nd audited
    assert max(max(v) for v in values.values()) < 1e-5


def test_audit_stops_a_run_whose_backward_is_broken(train_cfg, tmp_path, monkeypatch):
    """Forget relu's derivative (pass g straight through): the audit must catch it at once,
    name the two relu layers (not the identity output layer, whose gradient stays right),
    and stop the run before it writes any result."""
    broken = dataclasses.replace(HF.ACTIVATIONS["relu"], chain=lambda g, a: g)
    monkeypatch.setitem(HF.ACTIVATIONS, "relu", broken)
    pattern = (
        r"audit failed at step 0: .* in layer1 \(512x784, activation relu\): [\d.]+; "
        r"layer2 \(256x512, activation relu\): [\d.]+\. "
    )
    with pytest.raises(HandpropError, match=pattern):
        train(train_cfg("callbacks.gradient_audit.every_n_steps=1"))
    assert not (tmp_path / "metrics.json").exists()


def test_audit_is_quiet_when_the_reference_itself_diverged():
    model = DigitClassifier(hidden=[8])
    with torch.no_grad():
        model.net.layers[0].weight.fill_(float("nan"))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    batch = (torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
    assert GradientAudit().relative_errors(trainer, model, batch) is None


@pytest.mark.parametrize("chunk", [1, 4])
def test_training_scalars_are_the_steps_gradient_norms_and_update_ratios(chunk):
    """grad_norm and update_ratio as logged equal a recount from the gradients and weights,
    one mini-batch per Lightning step or four."""

    class Capture(Logger):
        name, version = "capture", 0
        log_hyperparams = lambda self, *a, **k: None

        def __init__(self):
            super().__init__()
            self.rows = []

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

    class Witness(L.Callback):  # runs after TrainingScalars: the same gradients, the weights around the step
        def __init__(self):
            self.norms, self.before, self.ratios, self.step = {}, None, {}, None

        def on_before_optimizer_step(self, trainer, module, optimizer):
            layer = module.net.layers[0]
            self.norms[trainer.global_step] = torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm().item()
            self.before, self.step = layer.weight.detach().clone(), trainer.global_step

        def on_before_backward(self, trainer, module, loss):  # the next step's: the previous one is taken
            if self.step is not None:
                w = module.net.layers[0].weight.detach()
                self.ratios[self.step] = ((w - self.before).norm() / self.before.norm()).item()
                self.step = None

        def on_train_batch_end(self, trainer, module, *args):
            self.on_before_backward(trainer, module, None)

    torch.manual_seed(0)
    model = DigitClassifier(hidden=[16], chunk=chunk, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    logger, witness = Capture(), Witness()
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[TrainingScalars(), witness],
    )
    trainer.fit(model, datamodule=DigitsDataModule("sample", batch_size=64))
    logged = {}
    for step, metrics in logger.rows:
        for key, value in metrics.items():
            logged.setdefault(key, {})[step] = value
    assert sorted(logged["weights/grad_norm/layer1"]) == [1, 3, 5]  # the steps the logger writes: (k + 1) % 2 == 0
    for step, value in logged["weights/grad_norm/layer1"].items():
        assert value == pytest.approx(witness.norms[step], rel=1e-5)
    for step, value in logged["weights/update_ratio/layer1"].items():
        assert value == pytest.approx(witness.ratios[step], rel=1e-4)
    assert set(logged) >= {"weights/grad_norm/layer2", "weights/update_ratio/layer2"}
