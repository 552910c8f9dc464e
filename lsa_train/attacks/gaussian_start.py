"""Shared base of the attacks that start at ``x + 0.001 * N(0, I)`` and take signed steps (TRADES, MART)."""

from __future__ import annotations

from torch import Tensor

from lsa_train.attacks.base import Attack
from lsa_train.attacks.pgd import default_step_size
from lsa_train.attacks.validation import check_count, check_positive


class GaussianStartAttack(Attack):
    """Linf signed-gradient ascent from a small Gaussian start, as the TRADES and MART reference code do.

    Subclasses implement :meth:`perturb` with their own loss; this class holds the common arguments,
    the start point and the step size rule.

    Args:
        eps: Maximum perturbation (Linf radius), ``>= 0``. Required (e.g. ``8/255``).
        alpha: Step size, ``> 0``. Default: ``None``, meaning ``max(eps / 4, 2.5 * eps / steps)``
            (:func:`~lsa_train.attacks.pgd.default_step_size`).
        steps: Number of steps, ``>= 1``. Default: ``10``.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the Gaussian start; ``None`` uses the global RNG. Default: ``None``.
        clip: ``"project"`` (default, the reference code) clamps the iterate to the valid range after
            the start and every step; ``"forward"`` only clamps the model's input, a weaker ablation
            (see :class:`~lsa_train.attacks.base.Attack`).
    """

    _repr_fields = ("eps", "alpha", "steps")

    #: Standard deviation of the Gaussian start (as in the reference implementations).
    init_std: float = 1e-3

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        *,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        craft_mode: str = "eval",
        seed: int | None = None,
        clip: str = "project",
    ) -> None:
        super().__init__(eps, clip_min=clip_min, clip_max=clip_max, craft_mode=craft_mode, seed=seed, clip=clip)
        self.steps = check_count("steps", steps)
        self.alpha = default_step_size(self.eps, self.steps) if alpha is None else check_positive("alpha", alpha)

    @property
    def num_forward_backward(self) -> int:
        return self.steps

    @property
    def is_random(self) -> bool:
        return True

    def _gaussian_start(self, images: Tensor) -> Tensor:
        """``images + init_std * N(0, I)``, projected as every step is (:meth:`_step_project`; no autograd)."""
        return self._step_project(images + self.init_std * self._normal_like(images), images)

    def _signed_step(self, x_adv: Tensor, grad: Tensor, images: Tensor) -> Tensor:
        """``x_adv + alpha * sign(grad)``, projected as the start is (no autograd)."""
        return self._step_project(x_adv + self.alpha * grad.sign(), images)
