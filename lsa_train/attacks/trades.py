"""The TRADES inner maximization: push the prediction away from the clean one (KL divergence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsa_train.attacks.base import autocast_off
from lsa_train.attacks.gaussian_start import GaussianStartAttack
from lsa_train.attacks.losses import kl_to_clean
from lsa_train.attacks.registry import register_attack


@register_attack("trades")
class TRADESAttack(GaussianStartAttack):
    """Inner maximization of TRADES from 'Theoretically Principled Trade-off between Robustness and
    Accuracy' (Zhang et al., ICML 2019) [https://arxiv.org/abs/1901.08573].

    Starts at ``x + 0.001 * N(0, I)`` and runs signed-gradient ascent on
    ``sum_n KL(softmax(model(x_n)) || softmax(model(x'_n)))``; the clean prediction is computed
    once and detached. Every step is projected onto the Linf ball and the valid range. The
    labels are not used (``labels`` may be ``None``), and no ``loss_fn`` is accepted.

    Distance Measure: Linf.

    Args:
        eps: Maximum perturbation (Linf radius), ``>= 0``. Required (e.g. ``8/255``).
        alpha: Step size, ``> 0``. Default: ``None``, meaning ``max(eps / 4, 2.5 * eps / steps)``
            (:func:`~lsa_train.attacks.pgd.default_step_size`).
        steps: Number of steps, ``>= 1``. Default: ``10``.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the Gaussian start; ``None`` uses the global RNG. Default: ``None``.
        clip: ``"project"`` (default, the reference code) or ``"forward"`` (weaker ablation: only the
            model's input is clamped, see :class:`~lsa_train.attacks.base.Attack`).

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64, or ``None`` (unused).
        - output: same as ``images``.

    Example:
        >>> x_adv = TRADESAttack(eps=8 / 255, alpha=2 / 255, steps=10)(model, images, None)
    """

    needs_labels = False

    @property
    def num_forward_backward(self) -> int:
        """``steps`` (plus one forward-only pass for the clean prediction)."""
        return self.steps

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor | None) -> Tensor:
        with torch.no_grad():
            logits = self._logits(model, images)
            with autocast_off(logits.device.type):
                clean_log_probs = F.log_softmax(logits, dim=1)
            x_adv = self._gaussian_start(images)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            adv_logits = self._logits(model, x_adv)
            with autocast_off(adv_logits.device.type):
                loss = kl_to_clean(adv_logits, clean_log_probs)
            (grad,) = torch.autograd.grad(loss, [x_adv])
            with torch.no_grad():
                x_adv = self._signed_step(x_adv, grad, images)
        return x_adv.detach()
