"""Algorithm 2 of the paper as a library call: compare representations, pick the MVL."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lsa_train.analysis.capture import ProbeCapture
from lsa_train.analysis.measures import Measure, canonical_measure_name, get_measure
from lsa_train.analysis.mvl import check_mvl_rule, select_mvl
from lsa_train.analysis.probes import Probe, ProbeSpec, select_probes
from lsa_train.analysis.results import LSAResult


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


@torch.no_grad()
def compute_cm(
    model: nn.Module,
    probes: Sequence[Probe],
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    measure: str | Measure = "relative_error",
    batch_size: int | None = 256,
) -> torch.Tensor:
    """Comparison measure of every sample at every probe.

    The model runs in eval mode (restored afterwards) on clean and perturbed halves
    concatenated into one batch, so each chunk costs a single forward.

    Args:
        model: The network.
        probes: Probes from :func:`select_probes`.
        clean: Inputs, shape ``(M, ...)``.
        perturbed: Perturbed copies, same shape.
        measure: Registered measure name or a callable ``(a, b) -> (N,)``.
        batch_size: Samples per chunk (``None``: all at once).

    Returns:
        CM matrix, float32 on CPU, shape ``(M, L)``.
    """
    check_pair(clean, perturbed)
    measure_fn = get_measure(measure)
    device = model_device(model, clean.device)
    step = clean.shape[0] if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = [m.training for m in model.modules()]
    columns: list[torch.Tensor] = []
    half = 0

    def split_measure(output: torch.Tensor) -> torch.Tensor:
        # runs inside the hook: the feature map is compared and dropped, never copied
        return measure_fn(output[:half], output[half:])

    model.eval()
    try:
        with ProbeCapture(model, probes, detach=True, reduce=split_measure) as capture:
            for start in range(0, clean.shape[0], step):
                a = clean[start : start + step].to(device)
                b = perturbed[start : start + step].to(device)
                half = a.shape[0]
                model(torch.cat([a, b]))
                columns.append(torch.stack(list(capture.pop().values()), dim=1).float().cpu())
    finally:
        for module, mode in zip(model.modules(), was_training):
            module.training = mode
    return torch.cat(columns)


def analyze(
    model: nn.Module,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    probes: ProbeSpec | Sequence[Probe] = "activations",
    measure: str | Measure = "relative_error",
    eta: float | None = 1.0,
    top_k: int | None = None,
    batch_size: int | None = 256,
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
        batch_size: Samples per forward chunk.
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
