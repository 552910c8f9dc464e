"""Per-probe distribution of the comparison measure over samples (one box per probe)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from lsa_train.analysis.figures import clamp, label_fontsize, new_figure, save_png
from lsa_train.analysis.results import LSAResult

#: Most probe labels drawn; beyond it every k-th probe is labelled.
MAX_LABELS = 100


def cm_distribution_size(num_probes: int) -> tuple[float, float]:
    """Figure size in inches: ``(clamp(3 + 0.25 L, 6, 24), 5)``."""
    return clamp(3.0 + 0.25 * num_probes, 6.0, 24.0), 5.0


def cm_distribution_figure(result: LSAResult, *, title: str | None = None, log_scale: bool = False) -> Figure:
    """Box plot of the ``M`` per-sample CM values of every probe, MVL boxes in red.

    The dashed line is the overall mean ``mu``; with Algorithm 1 (``eta``) the dotted line is
    ``mu + eta * sigma``, which a probe's mean (white diamond) must exceed to be in the MVL.
    """
    names = result.probe_names
    figure = new_figure(*cm_distribution_size(len(names)))
    axes = figure.add_subplot()
    positions = list(range(len(names)))
    boxes = axes.boxplot(
        [result.cm[:, i].numpy() for i in positions], positions=positions, widths=0.6, patch_artist=True,
        showfliers=True, flierprops={"markersize": 2, "alpha": 0.4}, medianprops={"color": "black"},
    )
    mvl = set(result.mvl)
    for i, box in enumerate(boxes["boxes"]):
        box.set_facecolor("tab:red" if i in mvl else "tab:blue")
        box.set_alpha(0.55)
    axes.scatter(positions, result.probe_means.tolist(), marker="D", s=14, color="white", edgecolors="black",
                 zorder=3, label="mean")
    axes.axhline(result.mu, color="gray", linestyle="--", linewidth=1, label=f"mu = {result.mu:.3g}")
    if result.eta is not None:
        cut = result.mu + result.eta * result.sigma
        axes.axhline(cut, color="tab:red", linestyle=":", linewidth=1.2, label=f"mu + {result.eta:g} sigma")
    step = math.ceil(len(names) / MAX_LABELS)
    shown = positions[::step]
    axes.set_xticks(shown, [names[i] for i in shown], rotation=90 if len(names) > 6 else 0,
                    fontsize=label_fontsize(len(shown)))
    axes.set_xlim(-0.7, len(names) - 0.3)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("probe (forward order); red boxes: MVL")
    axes.set_ylabel(result.measure.replace("_", " ") + " per sample")
    source = result.perturbation or "perturbed"
    axes.set_title(title or f"CM distribution per probe ({source}, {result.num_samples} samples)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a box
    return figure


def plot_cm_distribution(
    result: LSAResult, path: str | Path, *, title: str | None = None, log_scale: bool = False
) -> Path:
    """Writes :func:`cm_distribution_figure` as a PNG (atomically; ``cm_distribution_size(L) x 100`` pixels)."""
    return save_png(cm_distribution_figure(result, title=title, log_scale=log_scale), path)
