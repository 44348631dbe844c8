"""Run directories for the Backprop tab's tests, written in a second without a Trainer.

``make_run`` writes what ``callbacks.BackpropSnapshots`` writes during training (the
same functions: ``write_digits``, ``write_snapshot``): the untrained network, then a few
epochs of plain SGD on the embedded sample, through the model's own hand-written step.
"""

from pathlib import Path

import torch

from handprop.callbacks.snapshots import write_digits, write_snapshot
from handprop.data import load_split
from handprop.module import DigitClassifier

# 3Blue1Brown's network (experiment=3b1b), and one of the default recipe's kind: smaller,
# ReLU, softmax and cross-entropy with label smoothing, standardised pixels
LESSON = dict(
    hidden=[16, 16], activation="sigmoid", output_activation="sigmoid", loss="quadratic", init="normal", normalize=False
)
DEFAULT = dict(hidden=[32, 16], activation="relu", loss="cross_entropy", label_smoothing=0.1, normalize=True)


def make_run(run: Path, hp: dict, epochs: int = 2, lr: float = 3.0, batch: int = 10, steps: int = 40) -> Path:
    torch.manual_seed(0)
    model = DigitClassifier(**hp)
    train, val = load_split("sample", "train"), load_split("sample", "val")
    if hp.get("normalize", True):
        pixels = train[0].double() / 255
        model.pixel_mean.fill_(pixels.mean().item())
        model.pixel_std.fill_(pixels.std().item())
    directory = run / "backprop"
    directory.mkdir(parents=True)
    write_digits(directory, val, train, batch, lr, most=200)
    write_snapshot(directory, model, 0, 0, val)
    params = model.net.weights_and_biases()
    for epoch in range(1, epochs + 1):
        for i in range(steps):
            at = (epoch * steps + i) * batch % (len(train[1]) - batch)
            images, labels = train[0][at : at + batch].float() / 255, train[1][at : at + batch]
            grads = torch.autograd.grad(model.output_and_loss(images, labels)[1], params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
        write_snapshot(directory, model, epoch, epoch * steps, val)
    return run
