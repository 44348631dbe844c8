"""The Backprop tab's numbers: one digit through a run's network and back, by the functions that train it.

Every number comes from a snapshot's own network, in float64, through ``functional``'s
forward and hand-written backward sweeps (``functional.nudges``), and one step's
gradient through the autograd engine calling ``MLPFunction.backward``, as a training
step takes it. Nothing here changes a file: a step is taken on a copy in memory.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch import Tensor

from .. import functional as HF
from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..errors import CheckpointError
from ..functional.nudges import neuron_states, nudges, ranking
from .digits import batch_of, digit_from_request
from .runs import BadRequest, load_once

THUMBNAILS = 64  # of a step's mini-batch, the digits shown
TOP_TERMS = 10  # a neuron's nudge: the largest of the nudges above it, one by one, and the rest as one sum


class Network:
    """A snapshot's network, as the tab reads it: float64 weights and biases, the pixel
    standardisation, the activations and the cost."""

    def __init__(self, path: Path):
        try:
            checkpoint = read_checkpoint(path, option=None)
        except CheckpointError as e:
            raise BadRequest(str(e)) from None
        model = model_from_checkpoint(checkpoint).double().eval()
        self.hparams = dict(model.hparams)
        self.sizes = model.net.sizes
        self.normalize = model.normalize
        self.params = [p.detach() for p in model.net.weights_and_biases()]
        self.activations = model.net.activations
        self.cost, self.smoothing = self.hparams["loss"], float(self.hparams.get("label_smoothing", 0.0))
        try:
            self.epoch, self.step = int(checkpoint.get("epoch", 0)), int(checkpoint.get("step", 0))
            self.val_acc = None if checkpoint.get("val_acc") is None else float(checkpoint["val_acc"])
        except (TypeError, ValueError, RuntimeError):
            raise BadRequest(f"{path.name}: its epoch, step or val_acc is not a number; train the run again") from None

    def sweep(self, pixels: Tensor, labels: Tensor, params=None):
        """One forward and hand-written backward sweep over ``pixels`` (N, 784) in [0, 1]."""
        x = self.normalize(pixels.double())
        return x, nudges(x, labels, self.cost, self.smoothing, self.activations, params or self.params)

    @torch.no_grad()
    def read(self, pixels: Tensor) -> Tensor:
        """The output (N, classes) as the cost reads it: the forward sweep alone."""
        layers = list(zip(self.params[::2], self.params[1::2]))
        return HF.COSTS[self.cost].read(HF.mlp(self.normalize(pixels.double()), layers, self.activations))

    def gradient(self, pixels: Tensor, labels: Tensor, params, backward: str = "manual") -> tuple[Tensor, list]:
        """The cost and its gradient as a training step takes them: ``functional.mlp`` (one
        MLPFunction node), differentiated by the autograd engine, which calls its
        hand-written backward (``backward="autograd"``: PyTorch's own, for comparison)."""
        leaves = [p.detach().requires_grad_() for p in params]
        layers = list(zip(leaves[::2], leaves[1::2]))
        with torch.enable_grad():
            x = self.normalize(pixels.double())
            _, loss = HF.mlp(x, layers, self.activations, 0.0, backward, labels, self.cost, self.smoothing)
            return loss.detach(), list(torch.autograd.grad(loss, leaves))


@functools.lru_cache(maxsize=16)
def _network(path: str, version: tuple) -> Network:
    return Network(Path(path))


def network(path: Path) -> Network:
    """The snapshot's network, loaded once per version of the file."""
    # (a snapshot thinned away since it was listed cannot be read)
    return load_once(_network, path, f"{path.name}: cannot be read ({{}}); press refresh for the snapshots kept")


def target_for(net: Network, pixels: Tensor, label: int | None, body: dict) -> int:
    """The digit the cost is asked for: the request's ``target``; without one, the digit's
    label if it has one, else the digit the network reads."""
    target, classes = body.get("target"), int(net.params[-1].shape[0])
    if target is None:
        return label if label is not None else int(net.read(pixels[None])[0].argmax())
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < classes:
        raise BadRequest(f"target {target!r}: must be a digit from 0 to {classes - 1}")
    return target


def explain(net: Network, pixels: Tensor, label: int | None, body: dict) -> dict:
    """What one digit asks of the network (see docs/tensorboard.md, the Backprop tab)."""
    target = target_for(net, pixels, label, body)
    x, inside = net.sweep(pixels[None], torch.tensor([target]))
    read = int(inside.read[0].argmax())
    layers = []
    for i, activation in enumerate(net.activations):
        a, pull, fprime = inside.activations[i][0], inside.pulls[i][0], inside.slopes[i][0]
        layers.append(
            {
                "name": f"hidden layer {i + 1}" if i < len(net.activations) - 1 else "output layer",
                "activation": activation,
                "a": a.tolist(),
                "nudge": pull.tolist(),
                "passed_on": inside.changes[2 * i + 1].tolist(),  # -∂C/∂z = the nudge times f'(z) = the bias change
                "slope": fprime.tolist(),
                "order": ranking(inside, i).tolist(),
                "state": neuron_states(activation, a, fprime),
            }
        )
    return {
        "snapshot": {"epoch": net.epoch, "step": net.step, "val_acc": net.val_acc},
        "network": _describe(net),
        "pixels": pixels.tolist(),
        "input_range": [float(x.min()), float(x.max())],
        "label": label,
        "read": read,
        "target": target,
        "output": {"read": inside.read[0].tolist(), "desired": inside.desired[0].tolist()},
        "cost": float(inside.cost),
        "layers": layers,
        "neuron": _neuron(net, inside, body),
    }


FORMULAS = {
    "quadratic": "the quadratic cost C = ½ Σₖ (aₖ − yₖ)², y one-hot",
    "quadratic_pm1": "the quadratic cost C = ½ Σₖ (aₖ − yₖ)², y = +1 for the digit, −1 for the others",
    "cross_entropy": "the cross-entropy C = −Σₖ yₖ ln pₖ, p = softmax(output)",
    "binary_cross_entropy": "C = −Σₖ [yₖ ln σₖ + (1 − yₖ) ln(1 − σₖ)], σ = sigmoid(output)",
}


def _describe(net: Network) -> dict:
    c = HF.COSTS[net.cost]
    return {
        "sizes": net.sizes,
        "activations": list(net.activations),
        "cost": net.cost,
        "label_smoothing": net.smoothing,
        "normalize": net.hparams.get("normalize", True),
        "calibrated": bool(c.calibrated),
        "reads": "softmax probability" if net.cost == "cross_entropy" else "output activation",
        "formula": FORMULAS.get(net.cost, net.cost)
        + (f", label smoothing ε = {net.smoothing:g}: y = (1−ε)·one-hot + ε/10" if net.smoothing else ""),
    }


def _neuron(net: Network, inside, body: dict) -> dict:
    """One neuron: its nudge as the sum of the nudges above it, each weighted by its
    connection; its bias change; its weight changes (the nudge it passes on times each
    input below it)."""
    hidden = len(net.activations) - 1
    layer, index = body.get("layer"), body.get("neuron")
    if layer is None and index is None:
        layer = 0
        index = int(ranking(inside, 0)[0])
    sizes = [p.shape[0] for p in net.params[::2]]
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= hidden:
        raise BadRequest(f"layer {layer!r}: must be from 0 (the first hidden layer) to {hidden} (the output layer)")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < sizes[layer]:
        raise BadRequest(f"neuron {index!r}: layer {layer} has neurons 0 to {sizes[layer] - 1}")
    passed_on = inside.changes[2 * layer + 1][index]  # -∂C/∂z_j, = the bias change
    terms = None
    if layer < hidden:
        w_above = net.params[2 * (layer + 1)][:, index]  # w_kj: from this neuron to each neuron k above
        contributions = w_above * inside.changes[2 * (layer + 1) + 1]  # w_kj · (-∂C/∂z_k)
        top = contributions.abs().argsort(descending=True)[:TOP_TERMS]
        terms = {
            "above": [int(k) for k in top],
            "weight": w_above[top].tolist(),
            "passed_on_above": inside.changes[2 * (layer + 1) + 1][top].tolist(),
            "term": contributions[top].tolist(),
            "rest": float(contributions.sum() - contributions[top].sum()),
            "sum": float(contributions.sum()),
        }
    return {
        "layer": layer,
        "index": index,
        "a": float(inside.activations[layer][0][index]),
        "nudge": float(inside.pulls[layer][0][index]),
        "passed_on": float(passed_on),
        "bias_change": float(passed_on),
        "weight_change": inside.changes[2 * layer][index].tolist(),  # -∂C/∂w_ji = -∂C/∂z_j · a_i (the input i)
        "from_above": terms,
    }


def one_step(net: Network, pixels: Tensor, target: int, lr: float, batch: tuple[Tensor, Tensor]) -> dict:
    """A plain gradient step of size ``lr`` on this digit alone, and on a mini-batch that
    contains it (``batch``: the run's fixed training mini-batch, its first digit replaced by
    this one), each on a copy of the weights: outputs and cost before and after."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr <= 100) or math.isnan(lr):
        raise BadRequest(f"step size {lr!r}: must be a number above 0 and at most 100")
    one = (pixels[None], torch.tensor([target]))
    images, labels = batch
    images, labels = torch.cat([pixels[None], images[1:]]), torch.cat([one[1], labels[1:]])
    results = {}
    before = net.sweep(*one)[1]  # this digit before either step
    for name, (xs, ys) in {"digit": one, "batch": (images, labels)}.items():
        cost, grads = net.gradient(xs, ys, net.params)
        stepped = [p - lr * g for p, g in zip(net.params, grads)]
        after = net.sweep(*one, stepped)[1]
        results[name] = {
            "cost_before": float(cost),
            "cost_after": float(net.gradient(xs, ys, stepped)[0]),
            "digit_cost_before": float(before.cost),
            "digit_cost_after": float(after.cost),
            "read_before": before.read[0].tolist(),
            "read_after": after.read[0].tolist(),
            "size": len(ys),
        }
    results["batch"]["labels"] = labels.tolist()
    results["batch"]["images"] = (images[:THUMBNAILS] * 255).round().int().tolist()  # the digits shown
    results["lr"], results["target"] = lr, target
    return results


def check(net: Network, pixels: Tensor, target: int) -> dict:
    """This digit's gradient by the hand-written backward and by PyTorch's autograd, per
    weight and bias, in float64."""
    labels = torch.tensor([target])
    _, ours = net.gradient(pixels[None], labels, net.params, "manual")
    _, theirs = net.gradient(pixels[None], labels, net.params, "autograd")
    rows = []
    for i, (mine, ref) in enumerate(zip(ours, theirs)):
        diff = float((mine - ref).abs().max())
        rows.append(
            {
                "name": f"{'W' if i % 2 == 0 else 'b'}{i // 2 + 1}",
                "shape": list(mine.shape),
                "max_abs_diff": diff,
                "max_abs": float(ref.abs().max()),
                "allclose": bool(torch.allclose(mine, ref, rtol=1e-10, atol=1e-12)),
            }
        )
    return {"rows": rows, "agree": all(r["allclose"] for r in rows)}


def digits_read(net: Network, digits: dict, shown: int) -> dict:
    """The run's validation digits as this snapshot reads them, its mistakes first."""
    pixels = digits["val_images"].flatten(1).double() / 255
    labels = digits["val_labels"]
    read = net.read(pixels).argmax(1)  # (the forward sweep alone: nothing is asked of these digits)
    wrong = read != labels
    order = torch.cat([wrong.nonzero()[:, 0], (~wrong).nonzero()[:, 0]])[:shown]
    return {
        "count": len(labels),
        "mistakes": int(wrong.sum()),
        "digits": [
            {
                "index": int(i),
                "label": int(labels[i]),
                "read": int(read[i]),
                "pixels": digits["val_images"][i].flatten().tolist(),
            }
            for i in order
        ],
    }


DIGITS_SHOWN = 60  # of the run's validation digits, the page offers this many


def _digit_and_target(net: Network, kept: dict, body: dict) -> tuple[Tensor, int | None, int]:
    pixels, label = digit_from_request(body, kept)
    return pixels, label, target_for(net, pixels, label, body)


def _explain_route(net: Network, kept: dict, body: dict) -> dict:
    pixels, label = digit_from_request(body, kept)
    return {**explain(net, pixels, label, body), "step_size": kept.get("learning_rate")}


def _step_route(net: Network, kept: dict, body: dict) -> dict:
    pixels, _, target = _digit_and_target(net, kept, body)
    return one_step(net, pixels, target, body.get("lr", kept.get("learning_rate")), batch_of(kept))


def _check_route(net: Network, kept: dict, body: dict) -> dict:
    pixels, _, target = _digit_and_target(net, kept, body)
    return check(net, pixels, target)


# The plugin's POST routes: (the snapshot's network, the run's digits, the request) -> the answer
ROUTES = {
    "digits": lambda net, kept, body: digits_read(net, kept, DIGITS_SHOWN),
    "explain": _explain_route,
    "step": _step_route,
    "check": _check_route,
}
