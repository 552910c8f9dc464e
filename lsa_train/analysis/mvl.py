"""Most Vulnerable Layers (MVL): Algorithm 1 of the paper, and a top-k variant."""

from __future__ import annotations

import torch


def check_mvl_rule(eta: float | None, top_k: int | None, min_layers: int = 0) -> None:
    """Validates an MVL rule; raises ``ValueError`` with the bad value."""
    if isinstance(min_layers, bool) or int(min_layers) != min_layers or min_layers < 0:
        raise ValueError(f"min_layers must be an integer >= 0, got {min_layers}")
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


def select_mvl(
    cm: torch.Tensor, *, eta: float | None = 1.0, top_k: int | None = None, min_layers: int = 0
) -> list[int]:
    """Selects the Most Vulnerable Layers from a CM matrix.

    Args:
        cm: Comparison measures, shape ``(M, L)``: samples x probes.
        eta: Algorithm 1 cut-off: probe ``l`` is kept when
            ``mean_m CM[m, l] - mu > eta * sigma``. Ignored when ``top_k`` is given.
        top_k: Keep the ``k`` probes with the largest mean CM instead.
        min_layers: With the ``eta`` rule, keep at least this many probes: when fewer pass the
            cut-off, the probes with the largest mean CM fill up the MVL (ties: the earlier probe).
            0 (the default here) is Algorithm 1 as published, which can select nothing (e.g. when
            the probes' mean CMs are close compared with the per-sample spread in ``sigma``).

    Returns:
        Sorted probe indices.

    Raises:
        ValueError: A bad rule, or ``top_k``/``min_layers`` above the number of probes ``L``.
    """
    if top_k is not None:
        eta = None
    check_mvl_rule(eta, top_k, min_layers)
    means, mu, sigma = mvl_statistics(cm)
    if top_k is not None:
        if top_k > means.numel():
            raise ValueError(f"top_k={top_k} exceeds the number of probes ({means.numel()})")
        return sorted(torch.topk(means, int(top_k)).indices.tolist())
    assert eta is not None
    chosen = [i for i, mean in enumerate(means.tolist()) if mean - mu > eta * sigma]
    if len(chosen) >= min_layers:
        return chosen
    if min_layers > means.numel():
        raise ValueError(f"min_layers={min_layers} exceeds the number of probes ({means.numel()})")
    by_vulnerability = sorted(range(means.numel()), key=lambda i: (-float(means[i]), i))
    extra = [i for i in by_vulnerability if i not in chosen][: min_layers - len(chosen)]
    return sorted(chosen + extra)
