"""Comparison measures (CM) between clean and perturbed representations.

Every measure maps two tensors of shape ``(N, ...)`` to one value per sample, shape
``(N,)``, in float32. All are differentiable and finite when a representation is all
zeros: norms in the denominator are clamped at ``eps`` (default ``1e-8``), so a zero
clean representation with an unchanged perturbed one gives 0, and a changed one gives
``||b|| / eps`` instead of inf.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Measure = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Floor for norms in denominators.
DEFAULT_EPS = 1e-8


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


def relative_error(clean: torch.Tensor, perturbed: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``||a - b||_F / ||a||_F`` per sample, the paper's CM. Shape ``(N,)``."""
    a, b = _flat(clean), _flat(perturbed)
    numerator = torch.linalg.vector_norm(a - b, dim=1)
    return numerator / torch.linalg.vector_norm(a, dim=1).clamp_min(eps)


def mse(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per sample. Shape ``(N,)``."""
    return (_flat(clean) - _flat(perturbed)).pow(2).mean(dim=1)


def cosine_distance(clean: torch.Tensor, perturbed: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``1 - cos(a, b)`` per sample, in ``[0, 2]``; 0 for identical inputs (zeros too). Shape ``(N,)``."""
    a, b = _flat(clean), _flat(perturbed)
    distance = 1.0 - F.cosine_similarity(a, b, dim=1, eps=eps)
    return torch.where((a == b).all(dim=1), torch.zeros_like(distance), distance)


MEASURES: dict[str, Measure] = {
    "relative_error": relative_error,
    "mse": mse,
    "cosine": cosine_distance,
}

_ALIASES = {"relative-error": "relative_error", "re": "relative_error", "cosine_distance": "cosine", "MSE": "mse"}


def canonical_measure_name(name: str) -> str:
    """Resolves aliases (``"relative-error"``) to the registry key, or raises ``ValueError``."""
    key = _ALIASES.get(name, name)
    if key not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; choose one of {sorted(MEASURES)}")
    return key


def get_measure(name: str | Measure) -> Measure:
    """Returns the measure called ``name`` (or ``name`` itself if it is callable)."""
    if callable(name):
        return name
    return MEASURES[canonical_measure_name(name)]


def list_measures() -> list[str]:
    return sorted(MEASURES)
