"""Comparison measures (CM) between clean and perturbed representations.

Every measure maps two tensors of shape ``(N, ...)`` to one value per sample, shape
``(N,)``, in float32 (float64 for float64 inputs). All are differentiable and finite when a representation is all
zeros: norms in the denominator are clamped at ``eps`` (default ``1e-8``), so a zero
clean representation with an unchanged perturbed one gives 0, and a changed one gives
``||b|| / eps`` instead of inf.

All but :func:`relative_error_pairwise` compare each sample on its own; that one also reads another
clean sample of the same batch (its denominator), so its values depend on the batch and it needs
at least two samples.
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
    clean, perturbed = _as_pair(clean, perturbed)
    return _RelativeError.apply(clean, perturbed, eps)


def _as_pair(clean: torch.Tensor, perturbed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if clean.ndim == 1 or clean.shape != perturbed.shape:  # compared as flat rows, as before
        return clean.reshape(clean.shape[0], -1), perturbed.reshape(perturbed.shape[0], -1)
    return clean, perturbed


def _from_previous(x: torch.Tensor) -> torch.Tensor:
    """``x_i - x_{i-1}`` for every sample ``i`` (cyclically: ``x_0 - x_{N-1}``), in one new tensor (no rolled copy)."""
    out = torch.empty_like(x)
    torch.sub(x[1:], x[:-1], out=out[1:])
    torch.sub(x[:1], x[-1:], out=out[:1])
    return out


class _PairwiseRelativeError(torch.autograd.Function):
    """``||a_i - b_i|| / max(||a_i - a_{i-1}||, eps)`` per sample (``i - 1`` modulo ``N``), reduced over all
    dims but the first.

    Saves only ``a``, ``b`` and the ``(N,)`` norms, as :class:`_RelativeError`, and recomputes both
    differences in the backward (plain autograd would keep ``a - b``, ``a - roll(a)`` and the rolled copy);
    the backward holds three feature maps at most. The denominator's gradient reaches ``a_i`` twice: as
    the sample and as the partner of ``i + 1``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        dims = tuple(range(1, a.ndim))
        a_c = _compute(a)
        diff_norm = torch.linalg.vector_norm(a_c - _compute(b), dim=dims)
        pair_norm = torch.linalg.vector_norm(_from_previous(a_c), dim=dims)
        ctx.save_for_backward(a, b, diff_norm, pair_norm)
        ctx.eps = eps
        return diff_norm / pair_norm.clamp_min(eps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        a, b, diff_norm, pair_norm = ctx.saved_tensors
        a_c = _compute(a)
        denominator = pair_norm.clamp_min(ctx.eps)
        # d||d||/dd = d / ||d|| (0 where d = 0, as torch's norm); the clamp passes no gradient below eps
        coefficient = grad / (denominator * diff_norm.masked_fill(diff_norm == 0, 1.0))
        unit_diff = (a_c - _compute(b)).mul_(_per_sample(coefficient, a))
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            active = (pair_norm > ctx.eps).to(pair_norm.dtype)
            scale = grad * diff_norm * active / (denominator.square() * pair_norm.masked_fill(pair_norm == 0, 1.0))
            pair_term = _from_previous(a_c).mul_(_per_sample(scale, a))  # d r_i / d a_i through ||a_i - a_{i-1}||
            grad_a = unit_diff - pair_term
            grad_a[:-1] += pair_term[1:]  # ... and d r_{i+1} / d a_i, a_i being the partner of i + 1
            grad_a[-1:] += pair_term[:1]
            del pair_term
            grad_a = grad_a.to(a.dtype)
        if ctx.needs_input_grad[1]:
            grad_b = unit_diff.neg_().to(b.dtype)
        return grad_a, grad_b, None


def relative_error_pairwise(
    clean: torch.Tensor, perturbed: torch.Tensor, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """The relative error normalized by the distance between *different* clean samples. Shape ``(N,)``.

    ``||a_i - b_i||_F / max(||a_i - a_{i-1}||_F, eps)`` per sample ``i``, where ``a_{i-1}`` is the clean
    representation of the previous sample of the batch (cyclically: sample 0 is paired with sample
    ``N - 1``; a fixed derangement, so no sample is its own partner). A layer cannot lower it by mapping
    every input to one point, or far from the origin: the value is invariant to a shift and a scaling
    of the representation, and a collapsed layer (all clean samples equal) gives ``||a_i - b_i|| / eps``,
    a huge value, wherever the collapsed point lies (``relative_error`` gives ``||a_i - b_i|| / ||a_i||``
    there, small for a point far from 0). Two equal clean samples paired together do the same.

    The value depends on the batch (who is next to whom); in the LSA analysis the samples are paired
    within each chunk of the forward (``compute_cm`` never makes a chunk of one sample when it has more).
    Differentiable in both arguments (also through the denominator, unless the caller detaches the
    clean representation: ``stop_clean_grad``); finite for zero representations (0 when nothing
    changes); float64 inputs stay float64.

    Raises:
        ValueError: A batch of one sample, which has no partner. It is refused rather than replaced by
            another quantity: the project's datamodules never train on a last batch of one sample, so it
            only comes from ``batch_size=1`` or an analysis of a single sample.
    """
    if clean.shape[0] < 2:
        raise ValueError(
            f"relative_error_pairwise needs at least 2 samples per batch (each is normalized by the distance to "
            f"another sample), got a batch of {clean.shape[0]}; use relative_error for single samples"
        )
    clean, perturbed = _as_pair(clean, perturbed)
    return _PairwiseRelativeError.apply(clean, perturbed, eps)


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
    "relative_error_pairwise": relative_error_pairwise,
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
