"""The pictures' math: the weight grid, the cost landscape's plane, surface and path."""

import matplotlib.pyplot as plt
import pytest
import torch

from handprop import pictures as P


def test_weight_grid_draws_each_neuron_red_positive_blue_negative():
    w = torch.zeros(3, 784)
    w[0, 0] = 2.0  # neuron 0: one strong positive weight at pixel (0, 0)
    w[1, 0] = -0.5  # neuron 1: one negative weight, scaled to its own maximum
    grid = P.weight_grid(w, pad=2)
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    side = 3 * (28 + 2)  # drawn 3x: a cell is 30 pixels (2 of padding), 90 on screen
    red, blue = grid[:, 6, 6], grid[:, 6, side + 6]  # the first pixel of neurons 0 and 1
    assert torch.equal(red, torch.tensor([1.0, 0.0, 0.0])) and torch.equal(blue, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(grid[:, 6 + 3, 6 + 3], torch.ones(3))  # a zero weight is white
    assert P.weight_grid(torch.randn(100, 784), max_neurons=16).shape == P.weight_grid(torch.randn(16, 784)).shape


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


def test_figures_draw():

    matrix = torch.eye(10, dtype=torch.long) * 50
    matrix[3, 5] = 2
    figs = [
        P.confusion_figure(matrix),
        P.mistakes_figure(torch.rand(5, 1, 28, 28), torch.arange(5), torch.arange(5) + 1, torch.rand(5)),
        P.landscape_figure(torch.linspace(-1, 1, 5), torch.rand(5, 5) + 0.1, torch.zeros(3, 2)),
    ]
    for fig in figs:
        fig.canvas.draw()
        width, height = fig.canvas.get_width_height()
        assert width > 300 and height > 150
        plt.close(fig)
