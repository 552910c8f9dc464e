"""PGD: projected gradient ascent in an Linf or L2 ball, with random restarts."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsa_train.attacks.base import Attack, LossFn
from lsa_train.attacks.registry import register_attack
from lsa_train.attacks.utils import NORMS, random_l2_noise, step_direction, uniform_linf_noise
from lsa_train.attacks.validation import check_choice, check_count, check_positive


def default_step_size(eps: float, steps: int) -> float:
    """The step size used when ``alpha`` is ``None``: ``max(eps / 4, 2.5 * eps / steps)``.

    ``2.5 * eps / steps`` is Madry et al.'s rule (the steps together can travel 2.5 radii, so
    even 1 or 2 steps reach the boundary of the ball); the floor ``eps / 4`` is the step every
    run with 10 or more steps has always used, so their results are unchanged.

    Args:
        eps: Radius of the ball (input units).
        steps: Number of steps, ``>= 1``.

    Returns:
        The step size, in the units of ``eps``.
    """
    return max(eps / 4, 2.5 * eps / steps)


@register_attack("pgd")
class PGD(Attack):
    """Projected Gradient Descent from 'Towards Deep Learning Models Resistant to Adversarial
    Attacks' (Madry et al., ICLR 2018) [https://arxiv.org/abs/1706.06083].

    Each step moves by ``alpha * sign(grad)`` (Linf) or ``alpha * grad / ||grad||_2`` per sample
    (L2, zero gradients give no step), then projects onto the eps ball and the valid range.
    The random start is the torchattacks one: ``U(-eps, eps)`` per coordinate (Linf), or a
    Gaussian direction scaled to a radius ``U(0, 1) * eps`` (L2). With ``restarts > 1`` every
    sample keeps the first restart that fools the model, or else the one with the highest loss.

    Distance Measure: Linf (``norm="linf"``) or L2 (``norm="l2"``).

    Args:
        eps: Maximum perturbation (radius of the ball), ``>= 0``. Required (e.g. ``8/255``).
        alpha: Step size, ``> 0``. Default: ``None``, meaning ``max(eps / 4, 2.5 * eps / steps)``
            (:func:`default_step_size`: ``eps / 4`` for 10+ steps, larger for fewer).
        steps: Number of steps, ``>= 1``. Default: ``10``.
        random_start: Start from a random point of the ball instead of ``x``. Default: ``True``.
        restarts: Number of random restarts, ``>= 1`` (``> 1`` needs ``random_start``). Default: ``1``.
        norm: ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        loss_fn: Loss to ascend, ``loss_fn(logits, labels)``. Default: ``None`` (cross-entropy).
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the random starts; ``None`` uses the global RNG. Default: ``None``.
        clip: ``"project"`` (default) clamps the iterate to the valid range after every step;
            ``"forward"`` only clamps the model's input, a weaker ablation (see :class:`Attack`).

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64.
        - output: same as ``images``.

    Example:
        >>> x_adv = PGD(eps=8 / 255, alpha=2 / 255, steps=10)(model, images, labels)
    """

    _repr_fields = ("eps", "alpha", "steps", "random_start", "restarts", "norm")

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        norm: str = "linf",
        *,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        loss_fn: LossFn | None = None,
        craft_mode: str = "eval",
        seed: int | None = None,
        clip: str = "project",
    ) -> None:
        super().__init__(
            eps, clip_min=clip_min, clip_max=clip_max, loss_fn=loss_fn, craft_mode=craft_mode, seed=seed,
            clip=clip,
        )
        self.norm = check_choice("norm", norm, NORMS)
        self.steps = check_count("steps", steps)
        self.alpha = default_step_size(self.eps, self.steps) if alpha is None else check_positive("alpha", alpha)
        self.restarts = check_count("restarts", restarts)
        self.random_start = bool(random_start)
        if self.restarts > 1 and not self.random_start:
            raise ValueError(
                f"restarts={restarts!r} > 1 needs random_start=True (restarts would be identical)"
            )

    @property
    def num_forward_backward(self) -> int:
        """``steps * restarts`` (with ``restarts > 1``, plus one forward-only pass per restart)."""
        return self.steps * self.restarts

    @property
    def is_random(self) -> bool:
        return self.random_start

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        if self.restarts == 1:
            return self._single_run(model, images, labels)
        best: tuple[Tensor, Tensor, Tensor] | None = None
        for _ in range(self.restarts):
            x_adv = self._single_run(model, images, labels)
            with torch.no_grad():
                logits = self._logits(model, x_adv)
                candidate = (x_adv, self._per_sample_loss(logits, labels), self._fooled(logits, labels))
            best = candidate if best is None else self._keep_better(best, candidate)
        assert best is not None
        return best[0]

    def _single_run(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        x_adv = images
        if self.random_start:
            with torch.no_grad():
                noise = (
                    uniform_linf_noise(images, self.eps, self._rng)
                    if self.norm == "linf"
                    else random_l2_noise(images, self.eps, self._rng)
                )
                x_adv = self._step_project(images + noise, images)
        for _ in range(self.steps):
            grad, _ = self._loss_and_grad(model, x_adv, labels)
            with torch.no_grad():
                x_adv = self._step_project(x_adv + self.alpha * step_direction(grad, self.norm), images)
        return x_adv


@register_attack("pgd_l2")
class PGDL2(PGD):
    """PGD in the L2 ball: :class:`PGD` with ``norm="l2"`` by default (Madry et al., ICLR 2018).

    Distance Measure: L2.

    Args:
        eps: Maximum perturbation (L2 radius per sample), ``>= 0``. Required (e.g. ``0.5``).
        alpha: Step size, ``> 0``. Default: ``None``, meaning ``max(eps / 4, 2.5 * eps / steps)``
            (:func:`default_step_size`: ``eps / 4`` for 10+ steps, larger for fewer).
        steps: Number of steps, ``>= 1``. Default: ``10``.
        random_start: Start from a random point of the ball instead of ``x``. Default: ``True``.
        restarts: Number of random restarts, ``>= 1``. Default: ``1``.
        norm: ``"l2"`` or ``"linf"``. Default: ``"l2"``.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        loss_fn: Loss to ascend, ``loss_fn(logits, labels)``. Default: ``None`` (cross-entropy).
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the random starts; ``None`` uses the global RNG. Default: ``None``.
        clip: ``"project"`` (default) or ``"forward"`` (weaker ablation, see :class:`Attack`).

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64.
        - output: same as ``images``.

    Example:
        >>> x_adv = PGDL2(eps=0.5, alpha=0.1, steps=10)(model, images, labels)
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        norm: str = "l2",
        *,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        loss_fn: LossFn | None = None,
        craft_mode: str = "eval",
        seed: int | None = None,
        clip: str = "project",
    ) -> None:
        super().__init__(
            eps,
            alpha,
            steps,
            random_start,
            restarts,
            norm,
            clip_min=clip_min,
            clip_max=clip_max,
            loss_fn=loss_fn,
            craft_mode=craft_mode,
            seed=seed,
            clip=clip,
        )
