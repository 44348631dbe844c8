"""The pictures: what each one says (titles, colour bars, captions, legends) and the
math behind the descent picture (the plane of the path, the cost on it)."""

from collections.abc import Callable

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.text import Text

from handprop import functional as HF
from handprop import pictures as P


def _texts(fig) -> str:
    """Every text a figure shows, drawn: titles, captions, axis and colour-bar labels."""
    fig.canvas.draw()
    return "\n".join(t.get_text() for t in fig.findobj(Text) if t.get_text())


def _colour_bar_ticks(fig, axes_index: int = -1) -> list[str]:
    fig.canvas.draw()
    return [t.get_text() for t in fig.axes[axes_index].get_yticklabels()]


def test_the_weight_figure_says_what_it_shows_on_one_scale():
    ramp = torch.linspace(-1, 1, 784)  # every neuron: from -1 (pixel 0) to +1 (the last pixel) ...
    w = ramp * torch.arange(1, 513)[:, None] / 512  # ... times its own size: neuron k is k times neuron 1
    fig = P.weights_figure(w, epoch=3)
    text = _texts(fig)
    assert "epoch 3" in text and "the 784 incoming weights of 64 of 512 hidden neurons, each as a 28×28 picture" in text
    assert "red positive, blue negative" in text and "one scale for all tiles" in text
    image = fig.axes[0].images[0]
    pixels, rgba = image.get_array(), image.to_rgba(image.get_array())
    # tile k (row-major, 8 columns of 28 + 2 pixels, 2 before the first): weights as they are
    x0, y0 = 2 + 30 * 7, 2 + 30 * 7  # the 64th tile
    assert pixels[y0 + 27, x0 + 27] == pytest.approx(float(w[63, -1]))
    top_left, bottom_right = rgba[y0, x0], rgba[y0 + 27, x0 + 27]
    assert top_left[2] > 0.9 > top_left[0]  # negative: blue
    assert bottom_right[0] > 0.9 > bottom_right[2]  # positive: red
    faint = rgba[2 + 27, 2 + 27]  # the first neuron's largest weight, 64 times smaller: nearly white
    assert faint[1] > bottom_right[1] + 0.5  # one scale for all: not each tile's own
    assert pixels.mask[1, 1] and not pixels.mask[2, 2]  # the gaps are empty (drawn white)
    plt.close(fig)

    fig = P.weights_figure(torch.randn(16, 784, generator=torch.Generator().manual_seed(0)), epoch=30)
    assert "all 16 hidden neurons" in _texts(fig)
    assert fig.axes[0].images[0].get_array().shape == (2 + 4 * 30, 2 + 4 * 30)  # a 4 x 4 grid
    plt.close(fig)


def test_the_confusion_matrix_counts_mistakes_and_its_colour_bar_counts_digits():
    matrix = torch.eye(10, dtype=torch.long) * 50
    matrix[0, 0] = 48
    matrix[3, 5], matrix[7, 2] = 2, 1  # 3 mistakes of 48 + 9 x 50 + 3 = 501
    fig = P.confusion_figure(matrix, epoch=120)
    text = _texts(fig)
    assert "epoch 120" in text and "3 mistakes of 501 validation digits" in text
    assert _colour_bar_ticks(fig) == ["1", "2", "5", "10", "20", "50"]  # counts, not log(1 + count)
    assert "log scale" in fig.axes[-1].get_ylabel()
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(cells, key=int) == ["1", "2", "48"] + ["50"] * 9  # every non-empty cell's count
    plt.close(fig)
    one = matrix.clone()
    one[3, 5] = one[7, 2] = 0
    one[4, 9] = 1
    fig = P.confusion_figure(one, epoch=1)
    assert "1 mistake of 499 validation digits" in _texts(fig)
    plt.close(fig)


@pytest.mark.parametrize("as_probabilities, score", [(True, "p(5) = 0.89"), (False, "output(5) = 0.89")])
def test_mistakes_are_captioned_with_what_the_outputs_are(as_probabilities, score):
    torch.manual_seed(0)
    images = torch.rand(3, 1, 28, 28)
    labels, predicted, scores = torch.tensor([3, 1, 7]), torch.tensor([5, 7, 1]), torch.tensor([0.891, 0.5, 0.25])
    fig = P.mistakes_figure(
        images, labels, predicted, scores, 7, mistakes=40, total=500, as_probabilities=as_probabilities
    )
    text = _texts(fig)
    assert "40 of 500 misread validation digits, epoch 7 (the first 3 shown)" in text
    assert "true 3 → predicted 5" in text and score in text
    assert ("p(" in text) == as_probabilities and ("output(" in text) != as_probabilities
    plt.close(fig)


def test_the_mistakes_grid_is_compact():
    torch.manual_seed(0)
    n = 32
    fig = P.mistakes_figure(
        torch.rand(n, 1, 28, 28), torch.zeros(n), torch.ones(n), torch.rand(n), 1, mistakes=n, total=500
    )
    width, height = fig.canvas.get_width_height()
    assert width < 1000 and height < 600 and width / height < 2.2  # 8 columns, 4 rows: no strip
    assert "32 of 500 misread validation digits, epoch 1" in _texts(fig)
    plt.close(fig)
    fig = P.mistakes_figure(*[torch.zeros(0)] * 4, 9, mistakes=0, total=500)
    assert "0 of 500 misread validation digits, epoch 9" in _texts(fig)
    plt.close(fig)


def _bowl(points: int = 13):
    coords = torch.linspace(-1, 1, points)
    a, b = torch.meshgrid(coords, coords, indexing="xy")
    return coords, 0.5 * torch.exp(a**2 + 2 * b**2)  # costs 0.5 .. 10


def _curve(k: int = 40):
    """A known path in 2-D that curves into the origin: a spiral arm."""
    t = torch.linspace(0, 1, k)
    r = (1 - t) ** 2 * 3
    return torch.stack([-r * torch.cos(2 * t), -r * torch.sin(3 * t) * 0.5], 1)


def test_the_descent_plane_recovers_a_path_embedded_in_many_dimensions():
    """A 2-D path laid into 5,000 dimensions along two random orthonormal directions
    (plus a little noise off the plane) around some 'trained weights': the principal
    plane is the path's own, the path comes back as it was (up to the axes' sign and
    rotation within the plane), and the plane explains nearly all of its spread."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5000, 2, generator=g, dtype=torch.float64))
    final = torch.randn(5000, generator=g, dtype=torch.float64)
    curve = _curve().double()
    path = P.DescentPath(capacity=100)
    for step, point in enumerate(curve):
        theta = final + q @ point + 1e-4 * torch.randn(5000, generator=g, dtype=torch.float64)
        path.record(step, [theta[:3000].view(60, 50).float(), theta[3000:].float()])  # as two parameters
    directions, coords, explained = path.plane([final[:3000].view(60, 50).float(), final[3000:].float()])
    assert directions.shape == (2, 5000) and coords.shape == (len(curve) + 1, 2)
    torch.testing.assert_close(directions @ directions.T, torch.eye(2), atol=1e-5, rtol=0)  # orthonormal
    # the directions span the embedding's plane: projecting them onto it loses nothing
    torch.testing.assert_close((q.T.float() @ directions.T).norm(dim=0), torch.ones(2), atol=1e-4, rtol=0)
    assert explained.sum() > 0.999 and explained[0] >= explained[1]
    # distances along the path are kept: it is the same curve, only turned in its plane
    true_steps = (curve[1:] - curve[:-1]).norm(dim=1).float()
    torch.testing.assert_close((coords[1:-1] - coords[:-2]).norm(dim=1), true_steps, atol=1e-3, rtol=0)
    assert (coords[0] < 0).all() and torch.equal(coords[-1], torch.zeros(2))  # from the lower left to θ*


def test_the_descent_path_keeps_evenly_spaced_snapshots_in_bounded_memory():
    path = P.DescentPath(capacity=8)
    w = torch.zeros(3)
    for step in range(0, 1000, 3):  # chunked steps: the step count jumps by 3
        path.record(step, [w + step])
        assert len(path.snapshots) <= 9
    assert path.steps[0] == 0  # the start always stays
    gaps = torch.tensor(path.steps).diff()
    assert (gaps >= path.stride).all() and gaps.max() < 2 * path.stride + 3  # evenly spaced
    assert [float(s[0]) for s in path.snapshots] == [float(s) for s in path.steps]
    assert path.steps[-1] > 900  # and up to the end


def test_a_path_that_never_moved_has_no_plane():
    path = P.DescentPath()
    w = [torch.ones(4, 3)]
    for step in range(5):
        path.record(step, w)
    assert path.plane(w) is None
    assert P.DescentPath().plane(w) is None  # nothing recorded


def test_the_descent_picture_draws_the_path_on_the_cost():
    coords, surface = _bowl()
    curve = _curve(20)
    path = torch.cat([curve, torch.zeros(1, 2)])
    alphas, betas = P.descent_grid(path, points=13)
    assert alphas[0] < path[:, 0].min() and alphas[-1] > 0 and betas[0] < path[:, 1].min() and betas[-1] > 0
    fig = P.descent_figure(alphas, betas, surface, path, torch.tensor([0.9, 0.08]), [0, *range(10, 210, 10)])
    ax = fig.axes[0]
    (drawn,) = [line for line in ax.lines if line.get_label() == "the optimiser's path"]
    torch.testing.assert_close(torch.as_tensor(drawn.get_xydata(), dtype=torch.float32), path)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["the optimiser's path", "start (step 0)", "trained weights (step 200)"]
    assert ax.get_xlabel() == "direction 1: 90.0% of the path's spread" and ax.get_ylabel() == "direction 2: 8.0%"
    assert "98% of the path's spread in this plane" in _texts(fig)
    assert _colour_bar_ticks(fig) == ["0.5", "1", "2", "5"]  # cost units, not log(cost)
    assert fig.axes[-1].get_ylabel() == "training cost (log scale, capped)"  # the corners, 10, cut off at 9.1
    plt.close(fig)


@torch.no_grad()
def cost_surface(
    weights: list, directions: tuple, cost: Callable[[], torch.Tensor], alphas: torch.Tensor, betas: torch.Tensor
) -> torch.Tensor:
    """The reference for ``pictures.mlp_cost_surface``, in the plainest way: the cost at
    θ* + α·d₁ + β·d₂ for every α in ``alphas`` and β in ``betas``, each point by moving
    every weight and evaluating the network. ``weights`` are the live parameters (moved in place and restored exactly);
    ``cost()`` evaluates the network as it stands. Returns costs[β, α]."""
    original = [w.detach().clone() for w in weights]
    surface = torch.empty(len(betas), len(alphas))
    try:
        for i, beta in enumerate(betas.tolist()):
            for j, alpha in enumerate(alphas.tolist()):
                for w, w0, d1, d2 in zip(weights, original, *directions):
                    torch.add(w0, d1, alpha=alpha, out=w.data).add_(d2, alpha=beta)
                surface[i, j] = cost().float()
    finally:
        for w, w0 in zip(weights, original):
            w.data.copy_(w0)
    return surface


def test_cost_surface_walks_the_plane_and_restores_the_weights():
    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(2, 4))]
    before = [p.detach().clone() for p in w]
    target = [p.detach().clone() for p in w]
    d1 = [torch.randn_like(p) for p in w]
    d2 = [torch.randn_like(p) for p in w]
    cost = lambda: sum(((p - t) ** 2).sum() for p, t in zip(w, target))  # a bowl centred on the weights
    coords = torch.linspace(-1, 1, 5)
    surface = cost_surface(w, (d1, d2), cost, coords, coords)
    assert surface.shape == (5, 5)
    assert surface[2, 2] == 0 and surface.argmin() == 12
    n1, n2 = sum((d**2).sum() for d in d1), sum((d**2).sum() for d in d2)
    cross = sum((a * b).sum() for a, b in zip(d1, d2))
    torch.testing.assert_close(surface[4, 0], n1 + n2 - 2 * cross)  # α = -1, β = +1
    for p, p0 in zip(w, before):
        assert torch.equal(p.detach(), p0)


def test_cost_surface_restores_the_weights_when_the_cost_fails():
    w = [torch.nn.Parameter(torch.ones(2, 2))]
    calls = []

    def cost():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return torch.tensor(0.0)

    with pytest.raises(RuntimeError, match="boom"):
        cost_surface(w, ([torch.ones(2, 2)], [torch.ones(2, 2)]), cost, torch.zeros(3), torch.zeros(3))
    assert torch.equal(w[0].detach(), torch.ones(2, 2))


@pytest.mark.parametrize("loss, as_probabilities", [("cross_entropy", True), ("quadratic", False)])
def test_the_callback_counts_epochs_from_1_and_says_what_the_outputs_are(
    drawn_cfg, monkeypatch, loss, as_probabilities
):
    """Through a real 2-epoch run: the epoch each picture is told, and p(...) or output(...)."""
    from handprop.callbacks import visuals  # noqa: PLC0415
    from handprop.train import train  # noqa: PLC0415

    calls = []

    def spy(name):
        draw = getattr(visuals, name)
        monkeypatch.setattr(visuals, name, lambda *a, **k: calls.append((name, a, k)) or draw(*a, **k))

    for name in ("weights_figure", "confusion_figure", "mistakes_figure"):
        spy(name)
    cfg = drawn_cfg(
        "model.hidden=[8]",
        f"model.loss={loss}",
        "model.label_smoothing=0",
        "callbacks.pictures.every_n_epochs=1",
        "callbacks.pictures.descent=false",
    )
    train(cfg)
    where = {"weights_figure": 1, "confusion_figure": 1, "mistakes_figure": 4}  # the epoch's argument
    for name, position in where.items():
        assert [args[position] for n, args, _ in calls if n == name] == [1, 2], name  # not 0, 1
    for name, args, kwargs in calls:
        if name == "mistakes_figure":
            assert kwargs["as_probabilities"] is as_probabilities
            assert len(args[0]) == min(kwargs["mistakes"], 32) and kwargs["total"] > 0


@pytest.mark.parametrize("cost, activation", [("cross_entropy", "relu"), ("quadratic", "sigmoid")])
def test_the_mlp_surface_is_the_cost_at_every_point_of_the_plane(cost, activation):
    """The first layer shared over the grid gives the numbers of moving every weight and
    evaluating the network at each point (cost_surface), and leaves the weights alone."""
    g = torch.Generator().manual_seed(0)
    sizes = [20, 12, 8, 5]
    params = [
        t
        for i, o in zip(sizes, sizes[1:])
        for t in (torch.randn(o, i, generator=g, dtype=torch.float64), torch.randn(o, generator=g, dtype=torch.float64))
    ]
    directions = tuple([torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3 for p in params] for _ in range(2))
    x = torch.randn(16, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (16,), generator=g)
    activations = (activation, activation, "identity" if cost == "cross_entropy" else "sigmoid")
    alphas, betas = torch.linspace(-1, 2, 5), torch.linspace(-0.5, 0.5, 4)
    before = [p.clone() for p in params]
    fast = P.mlp_cost_surface(
        x, y, cost, 0.1 if cost == "cross_entropy" else 0.0, activations, params, directions, alphas, betas
    )
    live = [torch.nn.Parameter(p.clone()) for p in params]
    smoothing = 0.1 if cost == "cross_entropy" else 0.0
    slow = cost_surface(
        live,
        directions,
        lambda: HF.mlp(
            x, list(zip(live[0::2], live[1::2])), list(activations), target=y, cost=cost, label_smoothing=smoothing
        )[1],
        alphas,
        betas,
    )
    assert fast.shape == (4, 5)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(params, before))


@pytest.mark.parametrize(
    "scale", [1.0, 4.2 / 1.15, 0.047 / 1.15]
)  # bar limits 1.15x the largest: 4.2 and 0.047 among them
def test_the_backprop_picture_ticks_its_bars_three_times_within_range(scale):
    """Every bar panel and colour bar of one digit's picture carries at most three round
    ticks inside its range (-t, 0, t on a signed axis); the hidden layers side by side
    share one y label."""
    g = torch.Generator().manual_seed(0)
    sizes = [784, 12, 8, 10]
    params = [t for i, o in zip(sizes, sizes[1:]) for t in (torch.randn(o, i, generator=g) / i**0.5, torch.zeros(o))]
    x, y = torch.rand(4, 784, generator=g), torch.tensor([3, 1, 4, 1])
    one = HF.nudges(x[:1], y[:1], "cross_entropy", 0.0, ("relu", "relu", "identity"), params)
    many = HF.nudges(x, y, "cross_entropy", 0.0, ("relu", "relu", "identity"), params)

    def scaled(ts):  # a chosen largest value on every panel and colour bar
        return [t / t.abs().max() * scale for t in ts]

    one = one._replace(pulls=scaled(one.pulls), changes=scaled(one.changes))
    many = many._replace(changes=scaled(many.changes))
    fig = P.backprop_figure(x[0].view(1, 28, 28), 3, one, many, 4, "after 0 steps", True)
    fig.canvas.draw()
    bars = [ax for ax in fig.axes if ax.patches and ax.get_ylabel() != "p(digit)"]  # the signed bar panels
    assert len(bars) == 3  # the output's nudges, two hidden layers
    colour_bars = [ax for ax in fig.axes if ax.get_ylabel() == "-∂C/∂w"]
    assert len(colour_bars) == 2
    for ax in bars + colour_bars:
        lo, hi = ax.get_ylim()
        ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
        assert len(ticks) == 3 and ticks[1] == 0 and ticks[0] == pytest.approx(-ticks[2]), (ax.get_title(), ticks)
    assert [ax.get_ylabel() for ax in bars] == ["-∂C/∂output", "-∂C/∂a", ""]
    plt.close(fig)


def test_the_backprop_picture_ranks_neurons_one_way_in_every_row():
    """The hidden rows and the weight tiles show the same neurons, first those passing on
    the largest change (|∂C/∂z|): a switched-off ReLU, asked a large nudge, passes on
    nothing and is not among them; and the title says "an 8"."""
    g = torch.Generator().manual_seed(1)
    sizes = [784, 40, 10]
    params = [t for i, o in zip(sizes, sizes[1:]) for t in (torch.randn(o, i, generator=g) / i**0.5, torch.zeros(o))]
    x = torch.rand(1, 784, generator=g)
    one = HF.nudges(x, torch.tensor([8]), "cross_entropy", 0.0, ("relu", "identity"), params)
    off = (one.activations[0][0] == 0) & (one.pulls[0][0].abs() > one.pulls[0][0].abs().median())
    assert off.any()  # switched-off neurons asked a large nudge: the old ranking's favourites
    fig = P.backprop_figure(x[0].view(1, 28, 28), 8, one, None, 0, "", True, neurons=8, top=8)
    fig.canvas.draw()
    hidden = next(ax for ax in fig.axes if ax.get_title().startswith("hidden layer 1"))
    shown = [int(t.get_text()) for t in hidden.get_xticklabels()]
    assert shown == HF.ranking(one, 0)[:8].tolist() and not off[shown].any()
    tiles = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("neuron ")]
    assert tiles == [f"neuron {j}" for j in shown]
    assert any(ax.get_title().startswith("the digit: an 8, read as") for ax in fig.axes)
    plt.close(fig)
