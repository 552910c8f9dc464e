"""FGSM: one signed-gradient step of size eps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsa_train.attacks.base import Attack, LossFn
from lsa_train.attacks.registry import register_attack


@register_attack("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method from 'Explaining and Harnessing Adversarial Examples'
    (Goodfellow et al., ICLR 2015) [https://arxiv.org/abs/1412.6572].

    ``x_adv = clamp(x + eps * sign(grad_x loss(model(x), y)), clip_min, clip_max)``.

    Distance Measure: Linf.

    Args:
        eps: Maximum perturbation (Linf radius), ``>= 0``. Required (e.g. ``8/255``).
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        loss_fn: Loss to ascend, ``loss_fn(logits, labels)``. Default: ``None`` (cross-entropy).
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Unused (FGSM is deterministic). Default: ``None``.

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64.
        - output: same as ``images``.

    Example:
        >>> x_adv = FGSM(eps=8 / 255)(model, images, labels)
    """

    def __init__(
        self,
        eps: float,
        *,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        loss_fn: LossFn | None = None,
        craft_mode: str = "eval",
        seed: int | None = None,
    ) -> None:
        super().__init__(
            eps, clip_min=clip_min, clip_max=clip_max, loss_fn=loss_fn, craft_mode=craft_mode, seed=seed
        )

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        grad, _ = self._loss_and_grad(model, images, labels)
        with torch.no_grad():
            return (images + self.eps * grad.sign()).clamp(self.clip_min, self.clip_max)
