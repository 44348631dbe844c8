"""The pictures: what each one says (titles, colour bars, captions, legends) and the
math behind the cost landscape (its plane, surface and path)."""

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.text import Text

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


def test_the_landscape_draws_a_visible_path_and_leaves_out_an_invisible_one():
    torch.manual_seed(0)
    coords, surface = _bowl()
    tiny = torch.rand(30, 2) * 0.002  # 0.1% of the plot's width: a dot under the star
    fig = P.landscape_figure(coords, surface, tiny)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trained weights"]
    assert not [line for line in ax.lines if line.get_color() == "red"]
    text = _texts(fig)
    assert "two random filter-normalised directions through the final weights (Li et al. 2018)" in text
    assert "too small to draw" in text
    plt.close(fig)

    visible = torch.linspace(0.6, 0, 20)[:, None] * torch.tensor([1.0, -0.5])
    fig = P.landscape_figure(coords, surface, visible)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["optimiser's path, projected", "trained weights"]
    (path,) = [line for line in ax.lines if line.get_color() == "red"]
    torch.testing.assert_close(torch.as_tensor(path.get_xydata(), dtype=torch.float32), visible)
    assert "too small" not in _texts(fig)
    plt.close(fig)


def test_the_landscape_colour_bar_is_the_cost_on_a_log_scale():
    coords, surface = _bowl()
    fig = P.landscape_figure(coords, surface)
    assert _colour_bar_ticks(fig) == ["0.5", "1", "2", "5"]  # cost units, not log(cost)
    assert fig.axes[-1].get_ylabel() == "training cost (log scale, capped)"  # the corners, 10, cut off at 9.1
    plt.close(fig)
    fig = P.landscape_figure(coords, surface.clamp_max(2))  # a shallow bowl: nothing capped
    assert fig.axes[-1].get_ylabel() == "training cost (log scale)"
    plt.close(fig)


def test_directions_are_filter_normalised():
    torch.manual_seed(0)
    weights = [torch.randn(32, 784), torch.randn(10, 32) * 5]
    plane = P.LandscapePlane(weights, torch.Generator().manual_seed(1))
    for direction in plane.directions(weights):
        for d, w in zip(direction, weights):
            assert d.shape == w.shape
            torch.testing.assert_close(d.norm(dim=1), w.norm(dim=1))  # row by row: each neuron's scale
    d1, d2 = plane.directions(weights)
    assert not torch.equal(d1[0], d2[0])
    again = P.LandscapePlane(weights, torch.Generator().manual_seed(1)).directions(weights)
    assert torch.equal(again[0][0], d1[0])  # seeded


def test_the_path_is_projected_onto_the_plane_exactly():
    torch.manual_seed(0)
    final = [torch.randn(16, 8), torch.randn(4, 16)]
    plane = P.LandscapePlane(final, torch.Generator().manual_seed(0))
    d1, d2 = plane.directions(final)
    off_plane = [torch.randn_like(w) * 1e-3 for w in final]
    steps = [(1.0, -0.3), (0.4, 0.2), (0.0, 0.0)]
    for a, b in steps:
        plane.record([f + a * x + b * y for f, x, y in zip(final, d1, d2)])
    path = plane.path(final)
    torch.testing.assert_close(path, torch.tensor(steps), atol=1e-5, rtol=0)
    # a move along neither direction barely moves the shadow
    plane.record([f + e for f, e in zip(final, off_plane)])
    assert plane.path(final)[-1].abs().max() < 1e-2


def test_cost_surface_walks_the_plane_and_restores_the_weights():
    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(2, 4))]
    before = [p.detach().clone() for p in w]
    target = [p.detach().clone() for p in w]
    d1 = [torch.randn_like(p) for p in w]
    d2 = [torch.randn_like(p) for p in w]
    cost = lambda: sum(((p - t) ** 2).sum() for p, t in zip(w, target))  # a bowl centred on the weights
    coords, surface = P.cost_surface(w, (d1, d2), cost, span=1.0, points=5)
    assert coords.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0] and surface.shape == (5, 5)
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
        P.cost_surface(w, ([torch.ones(2, 2)], [torch.ones(2, 2)]), cost, points=3)
    assert torch.equal(w[0].detach(), torch.ones(2, 2))


@pytest.mark.parametrize("loss, as_probabilities", [("cross_entropy", True), ("quadratic", False)])
def test_the_callback_counts_epochs_from_1_and_says_what_the_outputs_are(
    train_cfg, monkeypatch, loss, as_probabilities
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
    cfg = train_cfg(
        "model.hidden=[8]",
        f"model.loss={loss}",
        "model.label_smoothing=0",
        "callbacks.pictures.every_n_epochs=1",
        "callbacks.pictures.landscape=false",
    )
    train(cfg)
    where = {"weights_figure": 1, "confusion_figure": 1, "mistakes_figure": 4}  # the epoch's argument
    for name, position in where.items():
        assert [args[position] for n, args, _ in calls if n == name] == [1, 2], name  # not 0, 1
    for name, args, kwargs in calls:
        if name == "mistakes_figure":
            assert kwargs["as_probabilities"] is as_probabilities
            assert len(args[0]) == min(kwargs["mistakes"], 32) and kwargs["total"] > 0
