"""Most Vulnerable Layers (MVL): Algorithm 1 of the paper, and a top-k variant."""

from __future__ import annotations

import torch


def check_mvl_rule(eta: float | None, top_k: int | None) -> None:
    """Validates an MVL rule; raises ``ValueError`` with the bad value."""
    if eta is not None and top_k is not None:
        raise ValueError(f"give either eta or top_k, not both (eta={eta}, top_k={top_k})")
    if eta is not None and not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")


def mvl_statistics(cm: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Per-probe means ``(L,)`` (float64), and ``mu``, ``sigma`` over all ``M x L`` entries.

    ``sigma`` is the population standard deviation (divides by ``M * L``).
    """
    if cm.ndim != 2 or cm.numel() == 0:
        raise ValueError(f"CM must be a non-empty (samples, probes) matrix, got shape {tuple(cm.shape)}")
    cm = cm.double()
    return cm.mean(dim=0), float(cm.mean()), float(cm.std(unbiased=False))


def select_mvl(cm: torch.Tensor, *, eta: float | None = 1.0, top_k: int | None = None) -> list[int]:
    """Selects the Most Vulnerable Layers from a CM matrix.

    Args:
        cm: Comparison measures, shape ``(M, L)``: samples x probes.
        eta: Algorithm 1 cut-off: probe ``l`` is kept when
            ``mean_m CM[m, l] - mu > eta * sigma``. Ignored when ``top_k`` is given.
        top_k: Keep the ``k`` probes with the largest mean CM instead.

    Returns:
        Sorted probe indices.
    """
    if top_k is not None:
        eta = None
    check_mvl_rule(eta, top_k)
    means, mu, sigma = mvl_statistics(cm)
    if top_k is not None:
        if top_k > means.numel():
            raise ValueError(f"top_k={top_k} exceeds the number of probes ({means.numel()})")
        return sorted(torch.topk(means, int(top_k)).indices.tolist())
    assert eta is not None
    return [i for i, mean in enumerate(means.tolist()) if mean - mu > eta * sigma]
