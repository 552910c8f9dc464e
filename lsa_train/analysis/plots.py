"""The paper-style figure: comparison measure (y) against probe index (x)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lsa_train.analysis.results import LSAResult
from lsa_train.utils.io import atomic_write


def plot_layer_curves(
    results: LSAResult | Mapping[str, LSAResult],
    path: str | Path,
    *,
    title: str | None = None,
    mvl: Sequence[int] | None = None,
    log_scale: bool = False,
) -> Path:
    """Writes a PNG with one line per perturbation: mean CM per probe, MVL marked.

    Uses matplotlib's object API with the Agg canvas (no pyplot state, no display).

    Args:
        results: One result, or several keyed by perturbation name (same probes).
        path: Output file (``.png``); parent folders are created.
        title: Figure title (default names the measure and sample count).
        mvl: Probe indices to mark; default: the MVL of each result, ringed on its line.
        log_scale: Log y axis (useful when adversarial CMs dwarf statistical ones).

    Returns:
        The path written.
    """
    curves = {results.perturbation or "perturbed": results} if isinstance(results, LSAResult) else dict(results)
    if not curves:
        raise ValueError("plot_layer_curves needs at least one result")
    names = next(iter(curves.values())).probe_names
    for label, result in curves.items():
        if result.probe_names != names:
            raise ValueError(f"result {label!r} has different probes than the first result")
    width = min(max(6.0, 0.45 * len(names) + 2.0), 24.0)
    figure = Figure(figsize=(width, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    xs = list(range(len(names)))
    for label, result in curves.items():
        means = result.probe_means.tolist()
        (line,) = axes.plot(xs, means, "-o", markersize=4, label=label)
        marked = result.mvl if mvl is None else list(mvl)
        if marked:
            axes.scatter(
                marked, [means[i] for i in marked], s=140, facecolors="none",
                edgecolors=line.get_color(), linewidths=1.8,
            )
    if mvl is not None:
        for i in mvl:
            axes.axvspan(i - 0.3, i + 0.3, color="tab:red", alpha=0.08)
    first = next(iter(curves.values()))
    axes.set_xticks(xs, names, rotation=60 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                    fontsize=8)
    axes.set_xlabel("probe (forward order); rings mark the MVL")
    axes.set_ylabel(f"mean {first.measure.replace('_', ' ')}")
    if log_scale:
        axes.set_yscale("log")
    axes.set_title(title or f"Layer sustainability analysis ({first.num_samples} samples)")
    axes.grid(alpha=0.3)
    axes.legend()
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
