"""Pictures of a network learning: what its neurons look for, what it gets wrong, and the
valley of the cost function it walks down. Pure functions: tensors in, matplotlib figures
out; the TensorBoard callback in ``callbacks/visuals.py`` calls them. Every picture says
what it shows: a title (with the 1-based epoch), and a colour bar or legend in the units
it draws.

The descent picture follows Li, Xu, Taylor, Studer and Goldstein (2018), "Visualizing the
Loss Landscape of Neural Nets", section 7: the optimiser's path through weight space,
θ_0, θ_1, ..., θ* (every weight and bias, snapshots along training), drawn on the plane
through the trained weights θ* that the path itself spans most -- the two principal
directions of the differences θ_t − θ* -- over the training cost measured on that plane.
Two random directions, the paper's other view, are nearly orthogonal to the path in
~10⁵ dimensions: on them the path projects to a dot and a barely trained network draws
the same bowl as a trained one.

Four files: ``layout.py`` (tiles, ticks, PNG), ``training.py`` (weights, confusion,
mistakes), ``landscape.py`` (the math: nudges, the cost surface, the path; torch only)
and ``lesson.py`` (the descent and backpropagation figures; matplotlib).
"""

from .landscape import DescentPath, cost_surface_of, descent_grid, mlp_cost_surface, nudges_of
from .layout import DPI, figure_png
from .lesson import backprop_figure, descent_figure
from .training import confusion_figure, mistakes_figure, weights_figure

__all__ = [
    "DPI",
    "DescentPath",
    "backprop_figure",
    "confusion_figure",
    "cost_surface_of",
    "descent_figure",
    "descent_grid",
    "figure_png",
    "mistakes_figure",
    "mlp_cost_surface",
    "nudges_of",
    "weights_figure",
]
