"""Backpropagation itself: one layer's forward and backward, the sweeps through every layer,
and the ``torch.autograd.Function``s whose ``backward`` is the list in
``handprop.functional``'s docstring (``calls.py`` holds the functions that call them)."""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .activations import ACTIVATIONS, Activation
from .costs import COSTS

BACKWARDS = ("manual", "autograd")


# --------------------------------------------------------------------------- autograd plumbing


def first_order(backward):
    """Mark a hand-written backward as computing first derivatives only.

    With ``create_graph=True`` (double backward: Hessian-vector products, gradient
    penalties) PyTorch would differentiate the backward's own ops, and through the
    saved activation outputs that gives silently wrong second derivatives. Refuse
    instead, and say what works.
    """

    @functools.wraps(backward)
    def guarded(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "handprop's manual backward computes first derivatives only: double backward "
                "(create_graph=True, e.g. gradient penalties or Hessians) is not supported. "
                "Use backward='autograd' (model.backward=autograd) for that."
            )
        return backward(ctx, *grads)

    return guarded


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype that torch.autocast runs matrix products in right now, or None when it is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def autocast_inputs(tensors, device_type: str):
    """Mixed precision as a wrapper around the plain layers. Under torch.autocast (CPU
    bf16, CUDA fp16/bf16): the tensors cast to the autocast dtype once, and a context that
    turns autocast off, so the sweeps run, save and differentiate in that dtype. This is
    what ``torch.amp.custom_fwd(cast_inputs=<dtype>)`` and ``custom_bwd`` do, but for
    whichever device and dtype autocast has enabled, where those decorators need both
    fixed in advance. Autograd casts dW and db back to the parameters' dtype, so ``.grad``
    stays float32. Without autocast: unchanged, and a context that does nothing."""
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return tensors, contextlib.nullcontext()
    cast = [t if t is None or not t.is_floating_point() else t.to(dtype) for t in tensors]
    return cast, torch.autocast(device_type, enabled=False)


class CostFunction(torch.autograd.Function):
    """A cost on its own: C = cost(output, target), backward ∂C/∂output (see COSTS)."""

    @staticmethod
    def forward(ctx, output: Tensor, target: Tensor, cost: str, label_smoothing: float) -> Tensor:
        loss, saved = COSTS[cost].forward(output, target, label_smoothing)
        ctx.save_for_backward(*saved)
        ctx.cost, ctx.label_smoothing = cost, label_smoothing
        return loss

    @staticmethod
    @first_order
    def backward(ctx, g: Tensor):
        return COSTS[ctx.cost].backward(g, ctx.saved_tensors, ctx.label_smoothing), None, None, None


# --------------------------------------------------------------------------- one layer


class LayerSaved(NamedTuple):
    """What one layer's forward keeps for its backward (None where not needed)."""

    x: Tensor | None  # its input, for dW
    weight: Tensor | None  # for dx
    kept: Tensor | None  # what f' is computed from: the output a or the input z (Activation.saves)
    mask: Tensor | None  # the dropout mask: 1/(1-p) for a unit kept, 0 for one dropped


def layer_forward(x: Tensor, weight: Tensor, bias: Tensor | None, act: Activation):
    """z = x Wᵀ + b,  a = f(z). Returns a and what f' is computed from (Activation.saves)."""
    z = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    a = act.fn(z)
    return a, (a if act.saves == "output" else z if act.saves == "input" else None)


def layer_backward(g: Tensor, x, weight, kept, act: Activation, need_x=True, need_w=True, need_b=True):
    """From g = ∂C/∂a to (dx, dW, db), each only if wanted."""
    dz = act.chain(g, kept)  # dz = g ⊙ f'(z)
    dx = dz @ weight if need_x else None  # ∂C/∂x, handed down to the layer below
    dW = dz.t() @ x if need_w else None
    db = dz.sum(0) if need_b else None
    return dx, dW, db


def dropout_forward(a: Tensor, mask: Tensor) -> Tensor:
    """Inverted dropout: y = a ⊙ m, with m = 1/(1-p) for a unit kept and 0 for one dropped.
    (In a's dtype: under mixed precision the mask stays float32, 1/(1-p) exactly.)"""
    return (a * mask).to(a.dtype)


def dropout_backward(g: Tensor, mask: Tensor) -> Tensor:
    """∂C/∂a = g ⊙ m: only the units that were kept pass gradient back."""
    return (g * mask).to(g.dtype)


# --------------------------------------------------------------------------- the sweeps


def forward_layers(x, params, activations, masks, wants):
    """Backpropagation's forward sweep: x through every layer, bottom to top, dropout (mask
    m, None: none) after each. ``params`` holds weight and bias of each layer in
    turn, ``wants`` each layer's (dx, dW, db) flags: the input x is kept only for dW, W
    only for dx (the first layer computes no dx, so it does not hold on to W).
    Returns the output and, per layer, what its backward needs (LayerSaved)."""
    saved = []
    for i, (name, mask, (need_x, need_w, _)) in enumerate(zip(activations, masks, wants)):
        a, kept = layer_forward(x, params[2 * i], params[2 * i + 1], ACTIVATIONS[name])
        saved.append(LayerSaved(x if need_w else None, params[2 * i] if need_x else None, kept, mask))
        x = a if mask is None else dropout_forward(a, mask)
    return x, saved


def backward_layers(g, saved, activations, wants, pulls: list | None = None):
    """Backpropagation's backward sweep: from g = ∂C/∂output, top to bottom, every layer's
    (dW, db) -- returned bottom to top, weight and bias of each layer in turn, as
    ``forward_layers`` takes them -- and ∂C/∂x of the input (None unless wanted).
    ``pulls``: a list to receive ∂C/∂a of every layer's output, bottom to top."""
    grads = [None] * (2 * len(saved))
    for i in range(len(saved) - 1, -1, -1):
        x, weight, kept, mask = saved[i]
        if pulls is not None:
            pulls.insert(0, g)
        if mask is not None:
            g = dropout_backward(g, mask)
        g, grads[2 * i], grads[2 * i + 1] = layer_backward(g, x, weight, kept, ACTIVATIONS[activations[i]], *wants[i])
    return g, grads


# --------------------------------------------------------------------------- the Functions


class LinearActFunction(torch.autograd.Function):
    """One layer: y = dropout(f(x Wᵀ + b)) for a mini-batch x (N × n_in), W (n_out × n_in).

    forward:   z = x Wᵀ + b,   a = f(z),   y = a ⊙ m    (m: the dropout mask, 1/(1-p) or 0)
    backward:  given g = ∂C/∂y,
               da = g ⊙ m             only the units that were kept pass gradient back
               dz = da ⊙ f'(z)
               dW = dzᵀ x,   db = Σ_batch dz,   dx = dz W

    The sweeps of MLPFunction with one layer. ``ctx.needs_input_grad`` is honoured: the
    first layer's input is the image, which needs no gradient, so no dx is computed there.
    Mixed precision: see ``autocast_inputs``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, activation: str, mask=None):
        (x, weight, bias), no_autocast = autocast_inputs((x, weight, bias), x.device.type)
        wants = (ctx.needs_input_grad[:3],)
        with no_autocast:
            y, saved = forward_layers(x, (weight, bias), (activation,), (mask,), wants)
        ctx.save_for_backward(*saved[0])
        ctx.activation, ctx.wants, ctx.dtype = activation, wants, y.dtype
        return y

    @staticmethod
    @first_order
    def backward(ctx, g):
        g = g.to(ctx.dtype)  # under autocast the gradient from above may arrive in float32
        dx, (dW, db) = backward_layers(g, [LayerSaved(*ctx.saved_tensors)], (ctx.activation,), ctx.wants)
        return dx, dW, db, None, None


class MLPFunction(torch.autograd.Function):
    """A whole multilayer perceptron, and optionally its cost, as one autograd node:
    backpropagation's loop itself.

    forward:   x ← forward_layers(x);  then C ← cost(x, target)
    backward:  g ← ∂C/∂x;  g, (dW, db of every layer) ← backward_layers(g)

    Running the loop here rather than leaving it to PyTorch's engine means one call into
    Python per training step instead of one per layer and one for the cost: for a small
    network that call is most of the cost of a step.

    Arguments: x, the target (None: no cost, return the output only), the cost's name
    and label smoothing, the activation names and dropout masks (None: no dropout) of
    each layer, and last the layers' parameters, weight and
    bias of each layer in turn (autograd hands out gradients to tensors passed on their
    own). With a target it returns (output, C); the output stays differentiable.
    Mixed precision: see ``autocast_inputs``.
    """

    @staticmethod
    def forward(ctx, x, target, cost, label_smoothing, activations: tuple, masks: tuple, *params):
        (x, *params), no_autocast = autocast_inputs((x, *params), x.device.type)
        wants = _wanted_gradients(ctx.needs_input_grad, len(activations))
        with no_autocast:
            x, saved = forward_layers(x, params, activations, masks, wants)
        ctx.activations, ctx.wants, ctx.dtype = activations, wants, x.dtype
        ctx.cost, ctx.label_smoothing, ctx.with_cost = cost, label_smoothing, target is not None
        cost_saved = ()
        if target is not None:
            loss, cost_saved = COSTS[cost].forward(x, target, label_smoothing)
            ctx.set_materialize_grads(False)  # the output's gradient is None unless something else used it
        ctx.save_for_backward(*(t for layer in saved for t in layer), *cost_saved)
        return x if target is None else (x, loss)

    @staticmethod
    @first_order
    def backward(ctx, g, g_loss=None):
        n, per_layer = len(ctx.activations), len(LayerSaved._fields)
        flat = ctx.saved_tensors
        saved = [LayerSaved(*flat[i * per_layer : (i + 1) * per_layer]) for i in range(n)]
        if ctx.with_cost and g_loss is not None:  # the cost's gradient starts the sweep
            from_cost = COSTS[ctx.cost].backward(g_loss, flat[n * per_layer :], ctx.label_smoothing)
            g = from_cost if g is None else g + from_cost
        others = (None,) * (len(ctx.needs_input_grad) - 2 * n - 1)  # target, cost, ..., masks
        if g is None:
            return None, *others, *(None,) * (2 * n)
        g = g.to(ctx.dtype)  # under autocast the gradient from above may arrive in float32
        g, grads = backward_layers(g, saved, ctx.activations, ctx.wants)
        return g, *others, *grads


def every_parameter(n_layers: int) -> tuple[tuple[bool, bool, bool], ...]:
    """The (dx, dW, db) flags of a sweep for every weight and bias: no dx for the image."""
    return _wanted_gradients((False, *(True,) * (2 * n_layers)), n_layers)


@functools.lru_cache(maxsize=16)
def _one(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The gradient that starts a backward sweep, as the engine passes it (ones_like the
    cost); made once per dtype and device, never written to."""
    return torch.ones((), dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)  # the same few flag patterns, every training step
def _wanted_gradients(needs_input_grad: tuple[bool, ...], n_layers: int) -> tuple[tuple[bool, bool, bool], ...]:
    """(dx, dW, db) wanted for each layer, from autograd's flags: x's comes first, the
    layers' weight and bias last. A layer's dx is wanted if anything below it wants a
    gradient (the first layer's input, the image, usually does not)."""
    param_flags = needs_input_grad[len(needs_input_grad) - 2 * n_layers :]
    below, wants = needs_input_grad[0], []
    for need_w, need_b in zip(param_flags[0::2], param_flags[1::2]):
        wants.append((below, need_w, need_b))
        below = below or need_w or need_b
    return tuple(wants)
