"""Comparison measures (CM) between clean and perturbed representations.

Every measure maps two tensors of shape ``(N, ...)`` to one value per sample, shape
``(N,)``, in float32 (float64 for float64 inputs). All are differentiable and finite when a representation is all
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
    flat = x.reshape(x.shape[0], -1)
    return flat if flat.dtype == torch.float64 else flat.float()  # half/bf16 features are compared in float32


def _compute(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype the measures compute in: float32 for half/bf16 (and float32), float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


class _RelativeError(torch.autograd.Function):
    """``||a - b|| / max(||a||, eps)`` per sample of ``(N, ...)`` inputs, reduced over all dims but the first.

    Autograd would save ``a - b`` (one more feature map per probe) for the norm's backward, and a
    flattening ``reshape`` of a channels_last map or a float32 cast of a bf16 one would save a copy;
    this saves only ``a`` and ``b`` as given (the network keeps them alive anyway) and recomputes the
    float32 difference in the backward.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        dims = tuple(range(1, a.ndim))
        a_c = _compute(a)
        diff_norm = torch.linalg.vector_norm(a_c - _compute(b), dim=dims)
        clean_norm = torch.linalg.vector_norm(a_c, dim=dims)
        ctx.save_for_backward(a, b, diff_norm, clean_norm)
        ctx.eps = eps
        return diff_norm / clean_norm.clamp_min(eps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        a, b, diff_norm, clean_norm = ctx.saved_tensors
        a_c = _compute(a)
        denominator = clean_norm.clamp_min(ctx.eps)
        # d||d||/dd = d / ||d|| (0 where d = 0, as torch's norm); the clamp passes no gradient below eps
        coefficient = grad / (denominator * diff_norm.masked_fill(diff_norm == 0, 1.0))
        unit_diff = (a_c - _compute(b)) * _per_sample(coefficient, a)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            active = (clean_norm > ctx.eps).to(clean_norm.dtype)
            scale = grad * diff_norm * active / (denominator.square() * clean_norm.masked_fill(clean_norm == 0, 1.0))
            grad_a = (unit_diff - a_c * _per_sample(scale, a)).to(a.dtype)
        if ctx.needs_input_grad[1]:
            grad_b = (-unit_diff).to(b.dtype)
        return grad_a, grad_b, None


def relative_error(clean: torch.Tensor, perturbed: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``||a - b||_F / ||a||_F`` per sample, the paper's CM. Shape ``(N,)``, any memory layout, no copies kept."""
    if clean.ndim == 1 or clean.shape != perturbed.shape:  # compared as flat rows, as before
        clean, perturbed = clean.reshape(clean.shape[0], -1), perturbed.reshape(perturbed.shape[0], -1)
    return _RelativeError.apply(clean, perturbed, eps)


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
