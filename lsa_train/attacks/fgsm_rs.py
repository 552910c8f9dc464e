"""FGSM with a uniform random start ("fast adversarial training")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsa_train.attacks.base import Attack, LossFn
from lsa_train.attacks.registry import register_attack
from lsa_train.attacks.validation import check_positive


@register_attack("fgsm_rs")
class FGSMRS(Attack):
    """FGSM with random start from 'Fast is better than free: Revisiting adversarial training'
    (Wong et al., ICLR 2020) [https://arxiv.org/abs/2001.03994].

    Draws ``delta ~ U(-eps, eps)``, takes one signed-gradient step of size ``alpha`` from
    ``x + delta`` and projects back onto the eps ball and the valid range.

    Distance Measure: Linf.

    Args:
        eps: Maximum perturbation (Linf radius), ``>= 0``. Required (e.g. ``8/255``).
        alpha: Step size, ``> 0``. Default: ``None``, meaning ``1.25 * eps`` (as in the paper).
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        loss_fn: Loss to ascend, ``loss_fn(logits, labels)``. Default: ``None`` (cross-entropy).
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the random start; ``None`` uses the global RNG. Default: ``None``.

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64.
        - output: same as ``images``.

    Example:
        >>> x_adv = FGSMRS(eps=8 / 255)(model, images, labels)
    """

    _repr_fields = ("eps", "alpha")

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
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
        self.alpha = 1.25 * self.eps if alpha is None else check_positive("alpha", alpha)

    @property
    def is_random(self) -> bool:
        return True

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            x_adv = self._project(images + self._uniform_like(images, -self.eps, self.eps), images)
        grad, _ = self._loss_and_grad(model, x_adv, labels)
        with torch.no_grad():
            return self._project(x_adv + self.alpha * grad.sign(), images)
