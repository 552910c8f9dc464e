"""The MART inner maximization: PGD on cross-entropy from a small Gaussian start."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsa_train.attacks.gaussian_start import GaussianStartAttack
from lsa_train.attacks.registry import register_attack


@register_attack("mart")
class MARTAttack(GaussianStartAttack):
    """Inner maximization of MART from 'Improving Adversarial Robustness Requires Revisiting
    Misclassified Examples' (Wang et al., ICLR 2020) [https://openreview.net/forum?id=rklOg6EFwS].

    Starts at ``x + 0.001 * N(0, I)`` (the reference implementation's start, projected onto the
    ball and the valid range) and runs signed-gradient ascent on the mean cross-entropy, projecting
    every step onto the Linf ball and the valid range. Pair it with ``base_loss="mart"``.

    Distance Measure: Linf.

    Args:
        eps: Maximum perturbation (Linf radius), ``>= 0``. Required (e.g. ``8/255``).
        alpha: Step size, ``> 0``. Default: ``None``, meaning ``max(eps / 4, 2.5 * eps / steps)``
            (as PGD and TRADES; ``eps / 4`` for 10 or more steps).
        steps: Number of steps, ``>= 1``. Default: ``10``.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the Gaussian start; ``None`` uses the global RNG. Default: ``None``.
        clip: ``"project"`` (default, the reference code) or ``"forward"`` (weaker ablation: only the
            model's input is clamped, see :class:`~lsa_train.attacks.base.Attack`).

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64.
        - output: same as ``images``.

    Example:
        >>> x_adv = MARTAttack(eps=8 / 255, alpha=2 / 255, steps=10)(model, images, labels)
    """

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            x_adv = self._gaussian_start(images)
        for _ in range(self.steps):
            grad, _ = self._loss_and_grad(model, x_adv, labels)
            with torch.no_grad():
                x_adv = self._signed_step(x_adv, grad, images)
        return x_adv
