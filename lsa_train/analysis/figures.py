"""Shared figure plumbing: Agg figures of a fixed pixel size, atomic PNG writes, probe-label sizing.

Every figure of the analysis is made with matplotlib's object API (no pyplot state), so figures can be
drawn on a worker thread while training goes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lsa_train.utils.io import atomic_write

#: Resolution of every analysis figure (pixels = inches x DPI).
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width x height`` inches on an Agg canvas (``DPI`` pixels per inch)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def label_fontsize(count: int) -> float:
    """Tick-label font size (points) for ``count`` probe labels: 8 up to 30, down to 5 for 80+."""
    return clamp(8.0 - (count - 30) * 0.06, 5.0, 8.0)


def save_png(figure: Figure, path: str | Path) -> Path:
    """Writes ``figure`` as a PNG of exactly ``figsize x DPI`` pixels (no tight bbox), atomically."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


def read_rgb(path: str | Path) -> np.ndarray:
    """A PNG as ``uint8`` RGB, shape ``(H, W, 3)``: what a written figure looks like, e.g. for TensorBoard."""
    from matplotlib import image

    pixels = image.imread(Path(path), format="png")
    if pixels.dtype != np.uint8:
        pixels = np.round(pixels * 255.0).astype(np.uint8)
    return pixels[..., :3]
