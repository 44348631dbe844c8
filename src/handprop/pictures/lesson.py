"""The lesson's pictures: the descent down the cost, and one digit's backpropagation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..functional.nudges import neuron_states, ranking
from .layout import DPI, _mosaic, _nice_ticks, _three_ticks, _tick_label


def _cost_contours(fig, ax, alphas: Tensor, betas: Tensor, surface: Tensor, cax=None) -> None:
    """Filled contours of the cost, on a log colour scale with a colour bar in cost units
    (a far wall is capped, so that it does not take every colour)."""
    from matplotlib.colors import LogNorm  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    lo = float(surface.min().clamp_min(1e-12))
    top = lo + 10 * (float(surface.median()) - lo) + 1e-6
    hi = max(min(float(surface.max()), top), lo * 1.01)
    z = surface.clamp(lo, hi).numpy()
    levels = torch.logspace(math.log10(lo), math.log10(hi), 21).numpy()
    norm = LogNorm(vmin=lo, vmax=hi)
    filled = ax.contourf(alphas.numpy(), betas.numpy(), z, levels=levels, cmap="viridis", norm=norm)
    ax.contour(alphas.numpy(), betas.numpy(), z, levels=levels, colors="white", linewidths=0.3)
    bar = fig.colorbar(filled, ax=ax, cax=cax)
    bar.minorticks_off()
    ticks = _nice_ticks(lo, hi, at_least=4)
    bar.set_ticks(ticks, labels=[_tick_label(t) for t in ticks])
    capped = ", capped" if float(surface.max()) > hi else ""
    bar.set_label(f"training cost (log scale{capped})")


def descent_figure(
    alphas: Tensor,
    betas: Tensor,
    surface: Tensor,
    path: Tensor,
    explained: Tensor,
    steps: Sequence[int],
    title: str = "gradient descent down the cost",
):
    """The training cost over the plane of the path (``descent_grid``), the path on it from
    its first snapshot (step ``steps[0]``) to the trained weights at (0, 0), and on each
    axis the share of the path's spread it explains."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    fig = plt.figure(figsize=(6.4, 5.4), dpi=DPI)  # placed by hand: a layout engine doubles the drawing time
    ax = fig.add_axes((0.11, 0.09, 0.72, 0.77))
    _cost_contours(fig, ax, alphas, betas, surface, cax=fig.add_axes((0.86, 0.09, 0.03, 0.77)))
    p = path.numpy()
    ax.plot(p[:, 0], p[:, 1], "-o", color="red", markersize=2.5, linewidth=1.2, label="the optimiser's path")
    ax.plot(
        p[0, 0], p[0, 1], "o", color="white", markeredgecolor="red", markersize=7, label=f"start (step {steps[0]:,})"
    )
    ax.plot(
        [0],
        [0],
        "*",
        color="white",
        markeredgecolor="black",
        markeredgewidth=0.5,
        markersize=13,
        label=f"trained weights (step {steps[-1]:,})",
    )
    ax.legend(loc="best", fontsize=7)
    ax.set(
        xlim=(float(alphas[0]), float(alphas[-1])),
        ylim=(float(betas[0]), float(betas[-1])),
        xlabel=f"direction 1: {100 * float(explained[0]):.1f}% of the path's spread",
        ylabel=f"direction 2: {100 * float(explained[1]):.1f}%",
    )
    fig.suptitle(title, fontsize=10)
    ax.set_title(
        f"the plane the path itself spans most, through the trained weights (Li et al. 2018)\n"
        f"{len(p) - 1} snapshots of every weight and bias, {100 * float(explained.sum()):.0f}% of the path's "
        "spread in this plane",
        fontsize=8,
    )
    return fig


# --------------------------------------------------------------------------- backpropagation, one digit


def _states(one, layer: int, activation: str | None) -> list[str]:
    """ "saturated" / "off" / "" for each neuron of a hidden layer, for one digit."""
    if activation is None:
        return [""] * one.pulls[layer].shape[1]
    return neuron_states(activation, one.activations[layer][0].cpu(), one.slopes[layer][0].cpu())


def a_digit(k: int) -> str:
    """ "a 3", "an 8": the digit with its article, as it is read aloud."""
    return f"an {k}" if k == 8 else f"a {k}"


def _signed_bars(ax, values: Tensor, labels: Sequence, title: str, ylabel: str) -> None:
    """Bars up in red (increase), down in blue (decrease), on a symmetric axis."""
    v = values.float().cpu()
    colours = ["#d62728" if x > 0 else "#1f77b4" for x in v.tolist()]
    ax.bar(range(len(v)), v.numpy(), color=colours)
    ax.axhline(0, color="black", linewidth=0.6)
    top = max(float(v.abs().max()), 1e-12) * 1.15
    ax.set_ylim(-top, top)
    ax.yaxis.set_major_locator(_three_ticks())
    ax.set_xticks(range(len(v)), [str(x) for x in labels], fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(axis="y", labelsize=7)


def backprop_figure(
    digit: Tensor,
    label: int,
    one,
    batch=None,
    batch_size: int = 0,
    when: str = "",
    calibrated: bool = True,
    neurons: int = 8,
    top: int = 16,
    activations: Sequence[str] | None = None,
):
    """3Blue1Brown's backpropagation for one digit, from ``functional.nudges``:

      the digit and what the network outputs for it against what the cost wants;
      the nudge each output neuron wants (-∂C/∂output: desired - output);
      those nudges flowing back, weighted by the connections, to the hidden neurons
        (-∂C/∂a of each hidden layer, its ``top`` largest);
      the change the digit asks of the first layer's weights (-∂C/∂W: red up, blue down),
        each hidden neuron's 784 incoming weights as a 28x28 picture, for the ``neurons``
        hidden neurons this digit pushes hardest;
      and (``batch``, the nudges of a mini-batch of ``batch_size`` digits) the same
        neurons' changes averaged over the mini-batch: the step gradient descent takes.

    ``one``: the digit's Nudges (one digit); ``calibrated``: whether the outputs read are
    probabilities (softmax, sigmoid) or activations (the quadratic costs); ``activations``:
    each layer's, to name its saturated or switched-off neurons."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    read, desired = one.read[0].float().cpu(), one.desired[0].float().cpu()
    hidden = len(one.pulls) - 1
    rows = 2 + (hidden > 0) + (batch is not None)
    heights = [1.0] * (rows - 1 - (batch is not None)) + [0.75] * (1 + (batch is not None))
    fig_h = 2.2 * sum(heights) + 0.9
    fig = plt.figure(figsize=(10.0, fig_h), dpi=DPI)
    grid = fig.add_gridspec(
        rows,
        max(neurons, 6),
        height_ratios=heights,
        left=0.07,
        right=0.9,
        top=1 - 0.7 / fig_h,
        bottom=0.1 / fig_h,
        hspace=0.8,
        wspace=0.35,
    )
    classes = range(len(read))
    predicted = int(read.argmax())

    ax = fig.add_subplot(grid[0, 0:2])
    ax.imshow(digit.float().cpu().view(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"the digit: {a_digit(label)}, read as {predicted}", fontsize=8)
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 2 : 2 + (max(neurons, 6) - 2) // 2])
    width = 0.4
    ax.bar([k - width / 2 for k in classes], read.numpy(), width, color="0.45", label="the network's output")
    ax.bar([k + width / 2 for k in classes], desired.numpy(), width, color="white", edgecolor="black", label="desired")
    ax.set_xticks(list(classes), [str(k) for k in classes], fontsize=7)
    ax.set_title("output vs what the cost wants", fontsize=8)
    ax.set_ylabel("p(digit)" if calibrated else "output activation", fontsize=7)
    ax.yaxis.set_major_locator(_three_ticks(symmetric=not calibrated))
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, loc="upper left")

    ax = fig.add_subplot(grid[0, 2 + (max(neurons, 6) - 2) // 2 :])
    _signed_bars(
        ax,
        one.pulls[-1][0],
        list(classes),
        "the nudge each output neuron wants: desired - output",
        "-∂C/∂output",
    )

    row = 1
    if hidden:
        panels = grid[row, :].subgridspec(1, hidden, wspace=0.15)  # room for each panel's tick labels
        axes = []
        for i in range(hidden):
            pull = one.pulls[i][0].float().cpu()
            order = ranking(one, i)[:top].cpu()  # the one ranking, used by the weight changes below too
            ax = fig.add_subplot(panels[0, i])
            shown = f"the {len(order)} of {len(pull)} passing on most" if len(order) < len(pull) else f"all {len(pull)}"
            ylabel = "" if i else "-∂C/∂a"  # (the panels side by side share it; a second would run into the first)
            states = _states(one, i, activations[i] if activations else None)
            names = [f"{j}\n{states[j][:3]}." if states[j] else str(j) for j in order.tolist()]
            _signed_bars(ax, pull[order], names, f"hidden layer {i + 1}: {shown}", ylabel)
            axes.append(ax)
        axes[0].annotate(
            "the nudges flowing back to the hidden neurons: each one the sum of the nudges above, weighted by its "
            "connections to them;\nranked by the change each passes on, its nudge times its slope f'(z) "
            "(sat.: a saturated neuron, off: a switched-off ReLU, passing on almost nothing)",
            (0, 1.22),
            xycoords="axes fraction",
            fontsize=8,
            ha="left",
        )
        row += 1

    # the first layer's weight changes: dz_j times the pixels, for the neurons pushed hardest
    change = one.changes[0].float().cpu()
    strongest = ranking(one, 0)[:neurons].cpu()  # first in the first hidden layer's ranking, as in its row above
    sources = [("this digit asks", change)]
    if batch is not None:
        sources.append((f"averaged over a mini-batch of {batch_size}: the step", batch.changes[0].float().cpu()))
    cmap = plt.get_cmap("bwr").with_extremes(bad="white")
    for name, weights in sources:
        tiles = weights[strongest]
        limit = max(float(tiles.abs().max()), 1e-12)
        image, corner = _mosaic(tiles.view(-1, 28, 28), len(tiles), gap_x=6, gap_y=2, top=7)
        ax = fig.add_subplot(grid[row, :])
        im = ax.imshow(image.numpy(), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        for k, j in enumerate(strongest.tolist()):
            x, y = corner(k)
            ax.text(x + 14, y - 1.5, f"neuron {j}", ha="center", va="bottom", fontsize=7)
        ax.axis("off")
        box = ax.get_position()
        bar = fig.colorbar(im, cax=fig.add_axes((0.915, box.y0, 0.012, box.height)))
        bar.locator = _three_ticks()
        bar.ax.tick_params(labelsize=6)
        bar.set_label("-∂C/∂w", fontsize=7)
        ax.set_title(
            f"first-layer weight changes {name}: each neuron's 784 incoming weights (red up, blue down)",
            fontsize=8,
            loc="left",
        )
        row += 1

    fig.suptitle(f"backpropagation for one digit{', ' + when if when else ''}", fontsize=10)
    return fig
