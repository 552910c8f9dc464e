"""Named perturbations of an input batch, all clamped to the valid input range.

Statistical noise works on any tensor shape ``(N, ...)``; ``eps`` is the noise std
(gaussian, speckle) or the fraction of elements replaced (salt, pepper). Adversarial
perturbations (fgsm, pgd) are L-inf attacks of radius ``eps`` from :mod:`lsa_train.attacks`
and need the model (labels default to the model's own predictions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lsa_train.utils.modes import eval_mode


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian(x: torch.Tensor, eps: float, *, generator: torch.Generator | None = None,
             clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Additive Gaussian noise: ``x + eps * N(0, 1)``, clamped."""
    return (x + eps * _noise(x, generator)).clamp(*clip)


def speckle(x: torch.Tensor, eps: float, *, generator: torch.Generator | None = None,
            clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Multiplicative noise: ``x + x * eps * N(0, 1)``, clamped."""
    return (x + x * eps * _noise(x, generator)).clamp(*clip)


def salt(x: torch.Tensor, eps: float, *, generator: torch.Generator | None = None,
         clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Sets a random fraction ``eps`` of the elements to the maximum value."""
    _check_fraction(eps)
    return torch.where(_uniform(x, generator) < eps, torch.full_like(x, clip[1]), x).clamp(*clip)


def pepper(x: torch.Tensor, eps: float, *, generator: torch.Generator | None = None,
           clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Sets a random fraction ``eps`` of the elements to the minimum value."""
    _check_fraction(eps)
    return torch.where(_uniform(x, generator) < eps, torch.full_like(x, clip[0]), x).clamp(*clip)


def _check_fraction(eps: float) -> None:
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"salt/pepper eps is a fraction of elements and must lie in [0, 1], got {eps}")


def _adversarial(name: str) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, eps: float, *, model: nn.Module, labels: torch.Tensor | None = None,
            clip: tuple[float, float] = (0.0, 1.0), **attack_kwargs: Any) -> torch.Tensor:
        from lsa_train.attacks import create_attack  # attacks pull in more; only load when used

        if labels is None:
            with torch.no_grad(), eval_mode(model):
                labels = model(x).argmax(dim=1)
        attack = create_attack(name, eps=eps, clip_min=clip[0], clip_max=clip[1], **attack_kwargs)
        return attack(model, x, labels)

    run.__name__ = name
    run.__doc__ = f"L-inf {name.upper()} attack of radius ``eps`` (see :mod:`lsa_train.attacks`)."
    return run


STATISTICAL: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian": gaussian,
    "salt": salt,
    "pepper": pepper,
    "speckle": speckle,
}
ADVERSARIAL: dict[str, Callable[..., torch.Tensor]] = {name: _adversarial(name) for name in ("fgsm", "pgd")}
PERTURBATIONS: dict[str, Callable[..., torch.Tensor]] = {**STATISTICAL, **ADVERSARIAL}


def list_perturbations() -> list[str]:
    return list(PERTURBATIONS)


def perturb(
    name: str,
    x: torch.Tensor,
    eps: float,
    *,
    model: nn.Module | None = None,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip: tuple[float, float] = (0.0, 1.0),
    **attack_kwargs: Any,
) -> torch.Tensor:
    """Applies the perturbation ``name`` to ``x`` (shape ``(N, ...)``); returns a new tensor.

    Raises:
        ValueError: Unknown name, negative eps, or an adversarial perturbation without a model.
    """
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose one of {list_perturbations()}")
    if not eps >= 0:
        raise ValueError(f"perturbation eps must be >= 0, got {eps}")
    if name in ADVERSARIAL:
        if model is None:
            raise ValueError(f"perturbation {name!r} is adversarial and needs model=")
        return ADVERSARIAL[name](x, eps, model=model, labels=labels, clip=clip, **attack_kwargs)
    if attack_kwargs:
        raise ValueError(f"perturbation {name!r} takes no extra options, got {sorted(attack_kwargs)}")
    return STATISTICAL[name](x, eps, generator=generator, clip=clip)
