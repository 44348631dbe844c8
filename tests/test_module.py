"""The LightningModule: normalisation, the cost, gradients of a real step, the optimiser."""

import functools
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from handprop.data import DigitsDataModule, to_pixels
from handprop.gate import schedule_length
from handprop.module import DigitClassifier
from handprop.steps import run_steps

from conftest import bare_trainer


def _batch(n=32):
    """A training mini-batch of real digits, augmented as training draws it."""
    dm = DigitsDataModule("sample", batch_size=n, augment={"rotation": 10, "shift": 2})
    dm.setup("fit")
    chunk = next(iter(dm.train_dataloader()))
    return dm, (to_pixels(chunk.images, dm.augment), chunk.labels)


@pytest.mark.parametrize("loss,out_act", [("cross_entropy", "identity"), ("quadratic", "sigmoid")])
def test_a_real_step_manual_equals_autograd(loss, out_act):
    """A whole training step on real digits: the manual and the reference gradients agree."""
    torch.manual_seed(0)
    _, (images, labels) = _batch()
    model = DigitClassifier(hidden=[64, 32], activation="tanh", output_activation=out_act, loss=loss)
    model.pixel_mean.fill_(0.13)
    model.pixel_std.fill_(0.31)
    grads = {}
    for backward in ("manual", "autograd"):
        model.net.backward = backward
        model.zero_grad()
        model.output_and_loss(images, labels)[1].backward()
        grads[backward] = [p.grad.clone() for p in model.parameters()]
    for gm, ga in zip(grads["manual"], grads["autograd"]):
        torch.testing.assert_close(gm, ga, rtol=1e-5, atol=1e-6)


def test_forward_normalises_with_the_stored_statistics():
    model = DigitClassifier(hidden=[], init="normal")
    images = torch.rand(4, 1, 28, 28)
    model.pixel_mean.fill_(0.2)
    model.pixel_std.fill_(0.5)
    expected = ((images.flatten(1) - 0.2) / 0.5) @ model.net.layers[0].weight.t() + model.net.layers[0].bias
    torch.testing.assert_close(model(images), expected)
    assert {"pixel_mean", "pixel_std"} <= set(model.state_dict())


def test_raw_pixels_when_not_normalising():
    model = DigitClassifier(hidden=[], init="normal", normalize=False)
    images = torch.rand(4, 1, 28, 28)
    model.pixel_mean.fill_(0.2)  # ignored
    expected = images.flatten(1) @ model.net.layers[0].weight.t() + model.net.layers[0].bias
    torch.testing.assert_close(model(images), expected)


def test_l2_is_nielsens_weight_decay_on_the_weights_only(monkeypatch):
    """network2.py's update with L2: w <- (1 - eta*lambda/n) w - eta dC0/dw; b <- b - eta dC0/db."""

    torch.manual_seed(0)
    dm, (images, labels) = _batch()
    eta, lam = 0.5, 5.0
    model = DigitClassifier(
        hidden=[16],
        activation="sigmoid",
        init="normal_scaled",
        l2=lam,
        normalize=False,
        optimizer=functools.partial(torch.optim.SGD, lr=eta),
    )
    monkeypatch.setattr(DigitClassifier, "trainer", property(lambda self: SimpleNamespace(datamodule=dm)))  # n
    assert dm.train_size == 4000
    optimizer = model.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [lam / 4000, 0.0]
    before = {k: v.clone() for k, v in model.net.named_parameters()}
    model.output_and_loss(images, labels)[1].backward()
    grads = {k: v.grad.clone() for k, v in model.net.named_parameters()}
    optimizer.step()
    for name, p in model.net.named_parameters():
        decay = 1 - eta * lam / 4000 if name.endswith("weight") else 1.0
        torch.testing.assert_close(p.detach(), decay * before[name] - eta * grads[name])


def test_hyperparameters_are_plain_types():
    model = DigitClassifier(hidden=(32,), optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    assert dict(model.hparams)["hidden"] == [32]
    assert "optimizer" not in model.hparams


class _Trainer:
    estimated_stepping_batches = 320  # Lightning's count of training batches, one mini-batch each
    train_dataloader = max_epochs = None


@pytest.mark.parametrize(
    "scheduler,expected",
    [
        (functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1), {"total_steps": 320}),
        (functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR), {"T_max": 320}),
        (functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=None), {"total_steps": 320}),
        (functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=10), {}),
        (functools.partial(torch.optim.lr_scheduler.StepLR, step_size=5), {}),
    ],
)
def test_schedule_length_is_filled_in_only_when_missing(scheduler, expected, monkeypatch):
    model = DigitClassifier(hidden=[8], optimizer=functools.partial(torch.optim.SGD, lr=0.1), scheduler=scheduler)
    monkeypatch.setattr(DigitClassifier, "trainer", property(lambda self: _Trainer()))
    assert schedule_length(scheduler, lambda: run_steps(model.trainer)) == expected
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LRScheduler)


def test_logged_accuracies_count_each_epoch_exactly():
    """train/acc, val/acc and test/acc are the fraction of that epoch's digits read right:
    logged once per epoch, reset between epochs, equal to a recount on the same weights."""

    torch.manual_seed(0)
    dm = DigitsDataModule("sample", batch_size=500)
    model = DigitClassifier(hidden=[16], chunk=1, optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    counted, logged = [], []  # per epoch: [right, seen, loss sum] recounted; as logged
    original = model.output_and_loss

    def counting(images, labels, eager=False):  # what every training step computes its output and cost with
        out, loss = original(images, labels, eager)
        if model.training:  # (no dropout: the output is the step's own)
            counted[-1][0] += (out.argmax(1) == labels).sum().item()
            counted[-1][1] += len(labels)
            counted[-1][2] += loss.item() * len(labels)
        return out, loss

    model.output_and_loss = counting
    # Callbacks' on_train_epoch_end run before the module's (which logs): read it later.
    read = lambda trainer, module: logged.append(
        (trainer.callback_metrics["train/acc"].item(), trainer.callback_metrics["train/loss_epoch"].item())
    )
    clock = L.pytorch.callbacks.LambdaCallback(
        on_train_epoch_start=lambda trainer, module: (counted and read(trainer, module), counted.append([0, 0, 0.0])),
        on_train_end=read,
    )
    trainer = bare_trainer(max_epochs=3, callbacks=[clock])
    trainer.fit(model, datamodule=dm)
    assert counted[0][1] == 4000 and len(logged) == 3 and len(set(logged)) == 3
    assert [acc for acc, _ in logged] == pytest.approx([right / seen for right, seen, _ in counted])  # each epoch alone
    assert [loss for _, loss in logged] == pytest.approx([total / seen for _, seen, total in counted], rel=1e-6)

    def accuracy(split):
        model.eval()
        images, labels = dm.splits[split].images, dm.splits[split].labels
        with torch.no_grad():
            return (model(to_pixels(images)).argmax(1) == labels).float().mean().item()

    assert trainer.callback_metrics["val/acc"].item() == pytest.approx(accuracy("val"))
    trainer.test(model, datamodule=dm, verbose=False)
    assert trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy("test"))
