"""Algorithm 2 of the paper as a library call: compare representations, pick the MVL."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lsa_train.analysis.capture import ProbeCapture
from lsa_train.analysis.layout import choose_channels_last, default_chunk_size, to_layout
from lsa_train.analysis.measures import Measure, canonical_measure_name, get_measure
from lsa_train.analysis.mvl import check_mvl_rule, select_mvl
from lsa_train.analysis.probes import Probe, ProbeSpec, select_probes
from lsa_train.analysis.results import LSAResult
from lsa_train.utils.modes import eval_mode


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer, else ``fallback``."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return fallback


def check_pair(clean: torch.Tensor, perturbed: torch.Tensor) -> None:
    """Validates a clean/perturbed batch pair; raises ``ValueError`` naming the problem."""
    if clean.shape != perturbed.shape:
        raise ValueError(
            f"clean and perturbed inputs differ in shape: {tuple(clean.shape)} vs {tuple(perturbed.shape)}"
        )
    if clean.ndim == 0 or clean.shape[0] == 0:
        raise ValueError(f"inputs need a non-empty batch dimension, got shape {tuple(clean.shape)}")
    for label, tensor in (("clean", clean), ("perturbed", perturbed)):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{label} inputs contain NaN or inf values")


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``size`` samples covering ``range(total)``.

    No chunk holds a single sample unless ``total`` is 1: ``size`` is at least 2 and a last chunk of one
    sample is merged into the previous one, so that a measure that pairs samples within a batch
    (:func:`~lsa_train.analysis.measures.relative_error_pairwise`) always has a partner; per-sample
    measures give the same values either way.
    """
    size = max(int(size), 2)
    bounds = [(start, min(start + size, total)) for start in range(0, total, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], total)]
    return bounds


def compute_cm(
    model: nn.Module,
    probes: Sequence[Probe],
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    measure: str | Measure = "relative_error",
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """Comparison measure of every sample at every probe.

    The model runs in eval mode (restored afterwards), chunk by chunk, only up to the
    deepest probe: each forward carries ``batch_size / 2`` clean samples followed by
    their perturbed copies, compared probe by probe inside the hooks.

    Args:
        model: The network.
        probes: Probes from :func:`select_probes`.
        clean: Inputs, shape ``(M, ...)``.
        perturbed: Perturbed copies, same shape.
        measure: Registered measure name or a callable ``(a, b) -> (N,)``.
        batch_size: Samples per forward; ``None`` picks by device (64 on CPU, 512 on GPUs).
        channels_last: Feed 4-D inputs in ``channels_last`` layout; ``None`` turns it on
            for CPU inputs when the model accepts it (values are unchanged, speed is not).

    Returns:
        CM matrix, float32 on CPU, shape ``(M, L)``.
    """
    return compute_cms(
        model, probes, clean, [perturbed], measure=measure, batch_size=batch_size, channels_last=channels_last
    )[0]


@torch.no_grad()
def compute_cms(
    model: nn.Module,
    probes: Sequence[Probe],
    clean: torch.Tensor,
    perturbed: Sequence[torch.Tensor],
    *,
    measure: str | Measure = "relative_error",
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> list[torch.Tensor]:
    """:func:`compute_cm` for several perturbed versions of the same inputs.

    With several, the clean forward of each chunk (``batch_size`` samples) is shared by
    all of them, its probe outputs kept as the reference, so ``K`` perturbations cost
    ``K + 1`` forwards per chunk instead of ``2K``.

    Returns:
        One float32 CPU CM matrix of shape ``(M, L)`` per entry of ``perturbed``.
    """
    if not perturbed:
        raise ValueError("compute_cms needs at least one perturbed tensor")
    for other in perturbed:
        check_pair(clean, other)
    measure_fn = get_measure(measure)
    device = model_device(model, clean.device)
    step = default_chunk_size(device) if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    columns: list[list[torch.Tensor]] = [[] for _ in perturbed]
    reference: dict[str, torch.Tensor] = {}

    def compare(name: str, output: torch.Tensor) -> torch.Tensor:
        # runs inside the hook: the perturbed feature map is compared and dropped, never copied
        return measure_fn(reference[name], output)

    with eval_mode(model):
        layout = choose_channels_last(model, clean[:2].to(device), channels_last)
        with ProbeCapture(model, probes, detach=True) as capture:
            if len(perturbed) == 1:
                # one forward of [clean; perturbed] per chunk: the hook sees both halves, nothing is copied
                half = max(1, step // 2)
                capture.reduce = lambda _name, output: measure_fn(output[: output.shape[0] // 2],
                                                                  output[output.shape[0] // 2 :])
                for start, stop in chunk_bounds(clean.shape[0], half):
                    pair = torch.cat([clean[start:stop], perturbed[0][start:stop]])
                    values = capture.forward_until_captured(to_layout(pair.to(device), layout))
                    columns[0].append(torch.stack(list(values.values()), dim=1).float().cpu())
            else:
                for start, stop in chunk_bounds(clean.shape[0], step):
                    capture.reduce = None  # the clean outputs are kept (copied) as the reference
                    chunk = to_layout(clean[start:stop].to(device), layout)
                    reference = capture.forward_until_captured(chunk)
                    capture.reduce = compare
                    for k, other in enumerate(perturbed):
                        chunk = to_layout(other[start:stop].to(device), layout)
                        values = capture.forward_until_captured(chunk)
                        columns[k].append(torch.stack(list(values.values()), dim=1).float().cpu())
                    reference = {}
    return [torch.cat(chunks) for chunks in columns]


def analyze(
    model: nn.Module,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    probes: ProbeSpec | Sequence[Probe] = "activations",
    measure: str | Measure = "relative_error",
    eta: float | None = 1.0,
    top_k: int | None = None,
    batch_size: int | None = None,
    perturbation: str | None = None,
) -> LSAResult:
    """Runs the layer sustainability analysis on one clean/perturbed pair of batches.

    Args:
        model: The network (any ``nn.Module``); left in its original mode.
        clean: Clean inputs, shape ``(M, ...)``, e.g. ``(M, C, H, W)`` in [0, 1].
        perturbed: Perturbed copies of ``clean``, same shape.
        probes: What to compare: ``"activations"``, ``"learnable"``, name patterns,
            modules, or already selected :class:`Probe` objects.
        measure: ``"relative_error"`` (default), ``"mse"``, ``"cosine"``, or a callable.
        eta: Algorithm 1 cut-off (``mean_l - mu > eta * sigma``).
        top_k: Pick the ``k`` most vulnerable probes instead of using ``eta``.
        batch_size: Samples per forward (``None``: 64 on CPU, 512 on GPUs).
        perturbation: Name recorded in the result (e.g. ``"pgd"``).

    Returns:
        An :class:`LSAResult` with the ``(M, L)`` CM matrix, statistics and the MVL.
    """
    check_pair(clean, perturbed)
    check_mvl_rule(None if top_k is not None else eta, top_k)
    measure_name = measure if callable(measure) else canonical_measure_name(measure)
    if isinstance(probes, Sequence) and probes and isinstance(probes[0], Probe):
        selected = list(probes)  # type: ignore[arg-type]
    else:
        device = model_device(model, clean.device)
        selected = select_probes(model, clean[:1].to(device), probes)  # type: ignore[arg-type]
    cm = compute_cm(model, selected, clean, perturbed, measure=measure, batch_size=batch_size)
    mvl = select_mvl(cm, eta=eta, top_k=top_k)
    return LSAResult(
        probe_names=[p.name for p in selected],
        cm=cm,
        mvl=mvl,
        measure=measure_name if isinstance(measure_name, str) else getattr(measure, "__name__", "custom"),
        perturbation=perturbation,
        eta=None if top_k is not None else eta,
        top_k=top_k,
    )
