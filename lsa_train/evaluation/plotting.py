"""Accuracy-vs-epsilon plot, drawn with matplotlib's object API (no pyplot, no global state)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lsa_train.utils.io import atomic_write


def plot_accuracy_vs_eps(
    sweep: Mapping[float, float],
    path: str | Path,
    pgd: Mapping[float, float] | None = None,
    *,
    autoattack: Mapping[float, float] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Plots accuracy (percent) against the Linf radius and writes a PNG atomically.

    The image is written to a temporary file in the same folder and renamed over ``path``, so
    a crash never leaves half a PNG.

    Args:
        sweep: FGSM ``{eps: accuracy}``, accuracies as fractions in ``[0, 1]``; drawn as a line.
        path: Destination ``.png`` file; parent folders are created.
        pgd: Optional PGD ``{eps: accuracy}`` points, drawn as markers (a line if several).
        autoattack: Optional AutoAttack ``{eps: accuracy}`` points, drawn as markers.
        title: Figure title. Default: ``"Accuracy vs. epsilon"``.
        dpi: Resolution. Default: ``120``.

    Returns:
        The written path.
    """
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = (("FGSM", sweep, "o-"), ("PGD", pgd, "s--"), ("AutoAttack", autoattack, "D:"))
    for label, points, style in series:
        if not points:
            continue
        items = sorted((float(eps), 100.0 * float(acc)) for eps, acc in points.items())
        ax.plot([e for e, _ in items], [a for _, a in items], style, label=label, markersize=5)
    ax.set_xlabel("epsilon (Linf, input units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2.0, 102.0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Accuracy vs. epsilon")
    ax.legend(loc="best")

    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
