"""The MVL over a training run: mean CM of every probe at every refresh, as a table, CSV and heatmap."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lsa_train.analysis.figures import clamp, label_fontsize, new_figure, save_png
from lsa_train.utils.io import atomic_write_text

#: Most tick labels drawn on either axis; beyond it every k-th probe/refresh is labelled.
MAX_ROW_LABELS = 100
MAX_COLUMN_LABELS = 40


@dataclass
class MVLHistoryTable:
    """Mean CM per probe and refresh, and which probes were the MVL (regularized) after each refresh.

    Attributes:
        probe_names: Probe names in forward order, length ``L``.
        epochs: Epoch at whose start each refresh ran, length ``R``.
        steps: Global step of each refresh, length ``R``.
        means: Mean CM, float64, shape ``(L, R)`` (row = probe, column = refresh).
        mvl: MVL membership, bool, shape ``(L, R)``.
    """

    probe_names: list[str]
    epochs: list[int]
    steps: list[int]
    means: np.ndarray
    mvl: np.ndarray

    @classmethod
    def from_history(cls, history: Sequence[Mapping[str, object]], probe_names: Sequence[str]) -> MVLHistoryTable:
        """Builds the table from :attr:`MVLRefreshCallback.history` entries.

        Args:
            history: One mapping per refresh with ``epoch``, ``step``, ``probe_means`` (length ``L``)
                and ``mvl`` (probe names).
            probe_names: The ``L`` probe names the means refer to.

        Raises:
            ValueError: Empty history, a length mismatch or an MVL name that is not a probe.
        """
        names = list(probe_names)
        if not history:
            raise ValueError("the MVL history is empty: nothing to draw")
        row = {name: i for i, name in enumerate(names)}
        means = np.full((len(names), len(history)), np.nan)
        mvl = np.zeros((len(names), len(history)), dtype=bool)
        for r, entry in enumerate(history):
            values = list(entry["probe_means"])  # type: ignore[call-overload]
            if len(values) != len(names):
                raise ValueError(f"refresh {r} has {len(values)} probe means, expected {len(names)} ({names[:3]}...)")
            means[:, r] = values
            for name in entry.get("mvl") or []:  # type: ignore[union-attr]
                if name not in row:
                    raise ValueError(f"refresh {r} names MVL probe {name!r}, which is not among the probes")
                mvl[row[name], r] = True
        return cls(names, [int(e["epoch"]) for e in history], [int(e["step"]) for e in history], means, mvl)  # type: ignore[call-overload]

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per refresh and probe: ``refresh, epoch, step, index, probe, mean_cm, mvl``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["refresh", "epoch", "step", "index", "probe", "mean_cm", "mvl"])
        for r, (epoch, step) in enumerate(zip(self.epochs, self.steps)):
            for i, name in enumerate(self.probe_names):
                writer.writerow([r, epoch, step, i, name, repr(float(self.means[i, r])), bool(self.mvl[i, r])])
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def read_csv(cls, path_or_text: str | Path) -> MVLHistoryTable:
        """Loads a table written by :meth:`to_csv` (a path or the CSV text)."""
        text = str(path_or_text)
        if "\n" not in text:
            text = Path(path_or_text).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        names = list(dict.fromkeys(r["probe"] for r in rows))
        refreshes = sorted({int(r["refresh"]) for r in rows})
        means = np.full((len(names), len(refreshes)), np.nan)
        mvl = np.zeros_like(means, dtype=bool)
        epochs, steps = [0] * len(refreshes), [0] * len(refreshes)
        for r in rows:
            i, k = int(r["index"]), int(r["refresh"])
            means[i, k], mvl[i, k] = float(r["mean_cm"]), r["mvl"] == "True"
            epochs[k], steps[k] = int(r["epoch"]), int(r["step"])
        return cls(names, epochs, steps, means, mvl)


def mvl_history_size(num_probes: int, num_refreshes: int) -> tuple[float, float]:
    """Figure size in inches: ``(clamp(3.5 + 0.3 R, 6, 20), clamp(1.8 + 0.2 L, 4, 16))``."""
    return clamp(3.5 + 0.3 * num_refreshes, 6.0, 20.0), clamp(1.8 + 0.2 * num_probes, 4.0, 16.0)


def mvl_history_figure(
    table: MVLHistoryTable,
    *,
    title: str | None = None,
    measure: str = "relative_error",
    log_scale: bool | None = None,
) -> Figure:
    """The heatmap: probes (rows, forward order) x refreshes (columns), one colour scale for all cells.

    MVL cells (the probes regularized from that refresh until the next) are outlined in red.

    Args:
        table: The data, e.g. ``MVLHistoryTable.from_history(callback.history, probe_names)``.
        title: Figure title (default names the number of refreshes).
        measure: Name of the comparison measure, for the colour bar.
        log_scale: Logarithmic colours; ``None`` uses them when the positive means span more than 100x.
    """
    means = table.means
    num_probes, num_refreshes = means.shape
    figure = new_figure(*mvl_history_size(num_probes, num_refreshes))
    axes = figure.add_subplot()
    positive = means[np.isfinite(means) & (means > 0)]
    if log_scale is None:
        log_scale = positive.size > 0 and float(positive.max()) > 100.0 * float(positive.min())
    if log_scale and positive.size:
        norm: Normalize = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    else:
        finite = means[np.isfinite(means)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1e-12)
    image = axes.imshow(means, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
    line_width = 1.6 if num_probes <= 60 and num_refreshes <= 60 else 0.9
    for i, r in zip(*np.nonzero(table.mvl)):
        axes.add_patch(Rectangle((r - 0.5, i - 0.5), 1.0, 1.0, fill=False, edgecolor="red", linewidth=line_width))
    row_step = math.ceil(num_probes / MAX_ROW_LABELS)
    rows = list(range(0, num_probes, row_step))
    axes.set_yticks(rows, [table.probe_names[i] for i in rows], fontsize=label_fontsize(len(rows)))
    column_step = math.ceil(num_refreshes / MAX_COLUMN_LABELS)
    columns = list(range(0, num_refreshes, column_step))
    axes.set_xticks(columns, [f"e{table.epochs[r]}" for r in columns], fontsize=label_fontsize(len(columns)),
                    rotation=90 if len(columns) > 12 else 0)
    axes.set_xlabel("MVL refresh (epoch it ran before); red: the MVL, regularized until the next refresh")
    axes.set_ylabel("probe (forward order)")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.02)
    colorbar.set_label(f"mean {measure.replace('_', ' ')}" + (" (log)" if log_scale else ""))
    axes.set_title(title or f"Mean CM per probe over {num_refreshes} MVL refreshes")
    return figure


def plot_mvl_history(
    history: Sequence[Mapping[str, object]] | MVLHistoryTable,
    path: str | Path,
    *,
    probe_names: Sequence[str] | None = None,
    csv_path: str | Path | None = None,
    title: str | None = None,
    measure: str = "relative_error",
    log_scale: bool | None = None,
) -> Path:
    """Writes the MVL-over-a-run heatmap as a PNG (and its data as CSV when ``csv_path`` is given).

    Args:
        history: :attr:`MVLRefreshCallback.history` (needs ``probe_names``) or a ready table.
        path: Output ``.png``; written atomically, parent folders created. The image is
            ``mvl_history_size(L, R) x 100`` pixels.
        probe_names: The probe names of the history's ``probe_means``.
        csv_path: Where to write :meth:`MVLHistoryTable.to_csv` as well.
        title, measure, log_scale: See :func:`mvl_history_figure`.

    Returns:
        The PNG path.
    """
    if isinstance(history, MVLHistoryTable):
        table = history
    else:
        if probe_names is None:
            raise ValueError("plot_mvl_history needs probe_names for a list of history entries")
        table = MVLHistoryTable.from_history(history, probe_names)
    if csv_path is not None:
        table.to_csv(csv_path)
    figure = mvl_history_figure(table, title=title, measure=measure, log_scale=log_scale)
    return save_png(figure, path)
