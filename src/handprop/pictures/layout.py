"""What every picture shares: one image of many tiles, ticks that read well, one PNG encoding."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import torch
from torch import Tensor

DPI = 100

# --------------------------------------------------------------------------- layout


def _mosaic(tiles: Tensor, columns: int, gap_x: int, gap_y: int, top: int = 0) -> tuple[Tensor, Callable]:
    """(n, h, w) tiles -> one (H, W) float image, NaN (drawn white) around and between them,
    with ``top`` empty rows above each tile for its caption; and ``corner(k)``, the (x, y)
    of tile k's top-left pixel. One image in one axes: 64 subplots take a second to draw."""
    n, h, w = tiles.shape
    rows = max(1, -(-n // columns))
    cell_w, cell_h = w + gap_x, top + h + gap_y
    out = torch.full((gap_y + rows * cell_h, gap_x + columns * cell_w), float("nan"))

    def corner(k: int) -> tuple[int, int]:
        r, c = divmod(k, columns)
        return gap_x + c * cell_w, gap_y + r * cell_h + top

    for k in range(n):
        x, y = corner(k)
        out[y : y + h, x : x + w] = tiles[k]
    return out, corner


def _nice_ticks(lo: float, hi: float, integers: bool = False, at_least: int = 3) -> list[float]:
    """Round values in [lo, hi] (lo > 0) for a log-scaled colour bar: 1-2-5 per decade, finer
    when the range is narrower than that."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m * 10**e:.6g}") for e in decades for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi and (not integers or t == int(t))]
        if len(ticks) >= at_least:
            break
    return ticks


def _three_ticks(symmetric: bool = True):
    """At most three round ticks (-t, 0, t on a symmetric axis): every tick is a line and a
    text to draw, and a bar chart of nudges reads by its sign and rough size."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn

    # (2.5 among the steps: without it a range of ±4.x gets five ticks)
    return MaxNLocator(nbins=2, steps=[1, 2, 2.5, 5, 10], symmetric=symmetric, min_n_ticks=2)


def _tick_label(value: float) -> str:
    return f"{value:g}"


def figure_png(figure) -> tuple[bytes, int, int]:
    """A figure drawn once and closed: its PNG file's bytes, height and width in pixels.
    (zlib's fastest level: a picture's flat colours compress nearly as well, in a
    fraction of the time.)"""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when a picture is drawn
    from PIL import Image  # noqa: PLC0415 -- (matplotlib's own dependency)

    figure.canvas.draw()
    pixels = figure.canvas.buffer_rgba()  # (height, width, 4), in device pixels
    image = Image.frombuffer("RGBA", (pixels.shape[1], pixels.shape[0]), pixels).convert("RGB")
    plt.close(figure)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue(), image.height, image.width
