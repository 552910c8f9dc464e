"""No attack: the identity, for normal (non-adversarial) training."""

from __future__ import annotations

from torch import Tensor, nn

from lsa_train.attacks.base import Attack, LossFn
from lsa_train.attacks.registry import register_attack


@register_attack("none")
class NoAttack(Attack):
    """Returns the images unchanged (a detached copy); used for normal training.

    Distance Measure: none (the perturbation is zero).

    Args:
        eps: Accepted for a uniform interface and otherwise unused. Default: ``0.0``.
        clip_min: Unused (the images are not clamped). Default: ``0.0``.
        clip_max: Unused. Default: ``1.0``.
        loss_fn: Unused. Default: ``None``.
        craft_mode: Unused (the model is not run). Default: ``"eval"``.
        seed: Unused. Default: ``None``.

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64 (may be ``None``).
        - output: same as ``images``.
    """

    norm = None
    needs_labels = False

    def __init__(
        self,
        eps: float = 0.0,
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

    @property
    def num_forward_backward(self) -> int:
        return 0

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor | None) -> Tensor:
        """Returns ``images.detach().clone()`` after checking the shapes; the model is not touched."""
        self._check_inputs(images, labels)
        return images.detach().clone()

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return images.clone()
