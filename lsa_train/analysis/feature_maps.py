"""Feature-map views: what a perturbation does to a probe's output, sample by sample.

For a 4-D probe output ``(N, C, H, W)`` one grid per probe shows, for each of a few samples, the
channels whose maps change most (Frobenius norm of the difference): the clean map, the perturbed map
(same colour scale) and their absolute difference. Any other output (``(N, F)`` of an MLP layer, or
3-D/5-D maps) is flattened per sample and shown as bars of the features that change most.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure, SubFigure
from torch import nn

from lsa_train.analysis.analyze import check_pair, model_device
from lsa_train.analysis.capture import ProbeCapture
from lsa_train.analysis.figures import clamp, new_figure, save_png
from lsa_train.analysis.probes import Probe, ProbeSpec, select_probes
from lsa_train.analysis.results import LSAResult
from lsa_train.utils.modes import eval_mode


@dataclass
class FeatureMapView:
    """Clean and perturbed outputs of one probe for a few samples (float32, CPU).

    Attributes:
        probe: The probe name.
        clean: Clean output, shape ``(S, ...)``.
        perturbed: Perturbed output, same shape.
    """

    probe: str
    clean: torch.Tensor
    perturbed: torch.Tensor

    @property
    def is_map(self) -> bool:
        """Whether the output is ``(S, C, H, W)`` (drawn as images) rather than drawn as bars."""
        return self.clean.ndim == 4

    def top_changes(self, k: int) -> torch.Tensor:
        """Per sample, the ``k`` channels (maps) or flat features (bars) that change most, largest first.

        Returns:
            Indices, shape ``(S, min(k, C or F))``.
        """
        diff = (self.perturbed - self.clean).flatten(2) if self.is_map else (self.perturbed - self.clean).flatten(1)
        score = diff.norm(dim=2) if self.is_map else diff.abs()
        return score.topk(min(k, score.shape[1]), dim=1).indices


@dataclass
class FeatureMapCapture:
    """Probe outputs and predictions of ``S`` clean samples and their perturbed copies.

    Attributes:
        views: One :class:`FeatureMapView` per probe, in forward order.
        clean_pred: Clean predictions ``(S,)``, or ``None`` if the model's output is not ``(S, classes)``.
        perturbed_pred: Perturbed predictions ``(S,)`` (or ``None``).
    """

    views: list[FeatureMapView]
    clean_pred: torch.Tensor | None
    perturbed_pred: torch.Tensor | None


def _resolve_probes(
    model: nn.Module, example: torch.Tensor, probes: ProbeSpec | Sequence[Probe] | LSAResult
) -> list[Probe]:
    if isinstance(probes, LSAResult):  # its MVL, or the probe with the largest mean CM if the MVL is empty
        names = probes.mvl_names or [probes.probe_names[int(probes.probe_means.argmax())]]
        return select_probes(model, example, names)
    if isinstance(probes, Sequence) and probes and isinstance(probes[0], Probe):
        return list(probes)  # type: ignore[arg-type]
    return select_probes(model, example, probes)  # type: ignore[arg-type]


@torch.no_grad()
def capture_feature_maps(
    model: nn.Module,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    probes: ProbeSpec | Sequence[Probe] | LSAResult,
) -> FeatureMapCapture:
    """Runs the clean and the perturbed batch in eval mode (mode restored) and keeps the probes' outputs.

    Args:
        model: The network.
        clean: Inputs in [0, 1], shape ``(S, ...)``.
        perturbed: Perturbed copies, same shape.
        probes: Probe names/patterns/sets, selected probes, or an :class:`LSAResult` (its MVL).
    """
    check_pair(clean, perturbed)
    device = model_device(model, clean.device)
    selected = _resolve_probes(model, clean[:1].to(device), probes)
    with eval_mode(model), ProbeCapture(model, selected, detach=True) as capture:
        clean_logits = model(clean.to(device))
        clean_out = capture.pop()
        perturbed_logits = model(perturbed.to(device))
        perturbed_out = capture.pop()
    views = [FeatureMapView(p.name, clean_out[p.name].float().cpu(), perturbed_out[p.name].float().cpu())
             for p in selected]
    return FeatureMapCapture(views, _predictions(clean_logits, len(clean)), _predictions(perturbed_logits, len(clean)))


def _predictions(logits: object, n: int) -> torch.Tensor | None:
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[0] == n:
        return logits.argmax(dim=1).cpu()
    return None


def _sample_title(
    s: int, captured: FeatureMapCapture, labels: torch.Tensor | None, class_names: Sequence[str] | None
) -> tuple[str, bool]:
    """``"sample 0 (label 3): clean pred 3, perturbed pred 5"`` and whether the prediction flipped."""

    def name(value: torch.Tensor | None) -> str:
        if value is None:
            return "?"
        index = int(value)
        return class_names[index] if class_names is not None and index < len(class_names) else str(index)

    label = f" (label {name(labels[s])})" if labels is not None else ""
    clean = captured.clean_pred[s] if captured.clean_pred is not None else None
    pert = captured.perturbed_pred[s] if captured.perturbed_pred is not None else None
    flipped = clean is not None and pert is not None and int(clean) != int(pert)
    return f"sample {s}{label}: clean pred {name(clean)}, perturbed pred {name(pert)}", flipped


def feature_map_size(view: FeatureMapView, num_samples: int, k: int) -> tuple[float, float]:
    """Figure size in inches: maps ``(clamp(1 + 3.9 k, 6, 20), clamp(1 + 1.8 S, 3, 16))``,
    bars ``(clamp(2 + 0.5 k, 6, 14), clamp(1 + 2 S, 3, 16))``."""
    if view.is_map:
        return clamp(1.0 + 3.9 * k, 6.0, 20.0), clamp(1.0 + 1.8 * num_samples, 3.0, 16.0)
    return clamp(2.0 + 0.5 * k, 6.0, 14.0), clamp(1.0 + 2.0 * num_samples, 3.0, 16.0)


def feature_map_figure(
    view: FeatureMapView,
    captured: FeatureMapCapture,
    *,
    num_channels: int = 4,
    num_features: int = 16,
    labels: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    perturbation: str = "perturbed",
) -> Figure:
    """One probe's grid: a row per sample, its prediction (clean/perturbed) in the row title.

    Maps: for each of the ``num_channels`` most changed channels, clean | perturbed (shared colour
    scale) | ``|difference|``. Vectors: bars of the ``num_features`` most changed features.
    """
    num_samples = view.clean.shape[0]
    k = num_channels if view.is_map else num_features
    top = view.top_changes(k)
    figure = new_figure(*feature_map_size(view, num_samples, top.shape[1]))
    kind = f"the {top.shape[1]} channels that change most" if view.is_map else f"the {top.shape[1]} largest changes"
    figure.suptitle(f"probe {view.probe}: clean vs {perturbation}, {kind}", fontsize=11)
    rows = figure.subfigures(num_samples, 1, squeeze=False)[:, 0]
    for s, row in enumerate(rows):
        title, flipped = _sample_title(s, captured, labels, class_names)
        row.suptitle(title, fontsize=9, color="tab:red" if flipped else "black")
        if view.is_map:
            _draw_maps(row, view, s, top[s].tolist(), perturbation)
        else:
            _draw_bars(row, view, s, top[s].tolist(), perturbation)
    return figure


def _draw_maps(row: SubFigure, view: FeatureMapView, s: int, channels: list[int], perturbation: str) -> None:
    axes = row.subplots(1, 3 * len(channels), squeeze=False)[0]
    for j, c in enumerate(channels):
        clean, pert = view.clean[s, c].numpy(), view.perturbed[s, c].numpy()
        diff = np.abs(pert - clean)
        low, high = float(min(clean.min(), pert.min())), float(max(clean.max(), pert.max()))
        high = high if high > low else low + 1e-12
        panels = (
            (clean, f"ch {c} clean", "viridis", low, high),
            (pert, f"ch {c} {perturbation}", "viridis", low, high),
            (diff, f"|diff| max {float(diff.max()):.2g}", "magma", 0.0, max(float(diff.max()), 1e-12)),
        )
        for a, (pixels, label, cmap, vmin, vmax) in zip(axes[3 * j : 3 * j + 3], panels):
            a.imshow(pixels, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            a.set_title(label, fontsize=7)
            a.set_xticks([])
            a.set_yticks([])


def _draw_bars(row: SubFigure, view: FeatureMapView, s: int, features: list[int], perturbation: str) -> None:
    axes = row.subplots()
    clean, pert = view.clean[s].flatten(), view.perturbed[s].flatten()
    xs = np.arange(len(features))
    axes.bar(xs - 0.2, clean[features].numpy(), width=0.4, label="clean", color="tab:blue")
    axes.bar(xs + 0.2, pert[features].numpy(), width=0.4, label=perturbation, color="tab:red")
    axes.set_xticks(xs, [str(f) for f in features], fontsize=7)
    axes.set_xlabel("feature (largest |change| first)", fontsize=8)
    axes.set_ylabel("activation", fontsize=8)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.legend(fontsize=7)


def _file_name(index: int, probe: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', probe)}.png"


def plot_feature_maps(
    model: nn.Module,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    out_dir: str | Path,
    *,
    probes: ProbeSpec | Sequence[Probe] | LSAResult,
    labels: torch.Tensor | None = None,
    num_samples: int = 4,
    num_channels: int = 4,
    num_features: int = 16,
    class_names: Sequence[str] | None = None,
    perturbation: str = "perturbed",
) -> list[Path]:
    """Writes one feature-map grid per probe into ``out_dir`` (``<NN>_<probe>.png``, atomically).

    Args:
        model: The network (left in its mode).
        clean: Inputs in [0, 1], shape ``(M, ...)``; the first ``num_samples`` are shown.
        perturbed: Their perturbed copies (e.g. PGD), same shape.
        out_dir: Output folder (created).
        probes: An :class:`LSAResult` (its MVL; the largest-mean probe if the MVL is empty), probe
            names/patterns (``["layer1.0.relu:2"]``), a probe set or selected probes.
        labels: True labels ``(M,)`` shown next to the predictions.
        num_samples: Rows (samples) per grid.
        num_channels: Channels shown per sample for ``(N, C, H, W)`` outputs.
        num_features: Bars per sample for other outputs.
        class_names: Names for the class indices in the titles.
        perturbation: Name of the perturbation, for the titles.

    Returns:
        The PNG paths, one per probe, in forward order.

    Raises:
        ValueError: Bad counts or mismatched inputs; ``ProbeSelectionError`` for unknown probes.
    """
    for name, value in (("num_samples", num_samples), ("num_channels", num_channels), ("num_features", num_features)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value}")
    captured = capture_feature_maps(model, clean[:num_samples], perturbed[:num_samples], probes)
    shown = labels[:num_samples].cpu() if labels is not None else None
    paths = []
    for index, view in enumerate(captured.views):
        figure = feature_map_figure(view, captured, num_channels=num_channels, num_features=num_features,
                                    labels=shown, class_names=class_names, perturbation=perturbation)
        paths.append(save_png(figure, Path(out_dir) / _file_name(index, view.probe)))
    return paths
