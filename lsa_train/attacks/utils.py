"""Tensor helpers shared by the attacks: per-sample norms, projections and random starts.

Every function works on a batch of any shape ``(N, ...)``; per-sample quantities are
computed over all dimensions but the first.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Norms the attacks support, as accepted by the ``norm`` arguments.
NORMS: tuple[str, ...] = ("linf", "l2")

#: Smallest denominator used when dividing by a per-sample norm.
TINY: float = 1e-12


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshapes per-sample values ``(N,)`` to ``(N, 1, ..., 1)`` so they broadcast against ``like``."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def l2_norms(t: Tensor) -> Tensor:
    """Per-sample Euclidean norms of ``t`` (shape ``(N, ...)``), as a tensor of shape ``(N,)``."""
    return t.reshape(t.shape[0], -1).norm(p=2, dim=1)


def linf_norms(t: Tensor) -> Tensor:
    """Per-sample max-norms of ``t`` (shape ``(N, ...)``), as a tensor of shape ``(N,)``."""
    return t.reshape(t.shape[0], -1).abs().amax(dim=1)


def l2_normalize(t: Tensor) -> Tensor:
    """Scales every sample of ``t`` to unit L2 norm; all-zero samples stay zero (safe division)."""
    return t / per_sample(l2_norms(t).clamp_min(TINY), t)


def linf_normalize(t: Tensor) -> Tensor:
    """Scales every sample of ``t`` to unit max-norm; all-zero samples stay zero (safe division)."""
    return t / per_sample(linf_norms(t).clamp_min(TINY), t)


def step_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent direction of unit size: ``sign(grad)`` (Linf) or ``grad / ||grad||_2`` (L2)."""
    return grad.sign() if norm == "linf" else l2_normalize(grad)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str, clip_min: float, clip_max: float) -> Tensor:
    """Projects ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then clamps to the box.

    For Linf the result is the exact Euclidean projection onto the intersection of the ball and
    the box; for L2 the clamp after the radial projection can only shrink the perturbation, so
    the result stays in both sets.

    Args:
        x_adv: Points to project, shape ``(N, ...)``.
        x: Centres of the balls, same shape as ``x_adv``.
        eps: Radius of the ball (``>= 0``).
        norm: ``"linf"`` or ``"l2"``.
        clip_min: Lower bound of the valid input range.
        clip_max: Upper bound of the valid input range.

    Returns:
        The projected points, same shape and dtype as ``x_adv``.
    """
    return project_to_ball(x_adv, x, eps, norm).clamp(clip_min, clip_max)


def project_to_ball(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Projects ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, without the box clamp.

    The iterate of an attack with ``clip="forward"`` (:class:`~lsa_train.attacks.base.Attack`): only the
    model input is clamped to the valid range, the perturbation may leave it.

    Args:
        x_adv: Points to project, shape ``(N, ...)``.
        x: Centres of the balls, same shape as ``x_adv``.
        eps: Radius of the ball (``>= 0``).
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        The projected points, same shape and dtype as ``x_adv``.
    """
    if norm == "linf":
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    delta = x_adv - x
    factor = (eps / l2_norms(delta).clamp_min(TINY)).clamp(max=1.0)
    return x + delta * per_sample(factor, delta)


def uniform_linf_noise(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """Noise drawn uniformly from ``[-eps, eps]`` per coordinate (the torchattacks PGD start)."""
    return torch.empty_like(x).uniform_(-eps, eps, generator=generator)


def random_l2_noise(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """Noise in the L2 ball of radius ``eps``: a Gaussian direction scaled to a radius ``U(0, 1) * eps``.

    This is the torchattacks PGDL2 start (the radius, not the volume, is uniform).
    """
    direction = torch.empty_like(x).normal_(generator=generator)
    radius = torch.empty(x.shape[0], dtype=x.dtype, device=x.device).uniform_(0.0, 1.0, generator=generator)
    return l2_normalize(direction) * per_sample(radius * eps, x)
