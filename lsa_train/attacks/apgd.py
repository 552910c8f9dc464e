"""APGD: step-size-free PGD with momentum and step-size halving at checkpoints."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsa_train.attacks.base import Attack, LossFn, autocast_off
from lsa_train.attacks.losses import cross_entropy_per_sample, dlr_loss
from lsa_train.attacks.registry import register_attack
from lsa_train.attacks.utils import NORMS, l2_normalize, linf_normalize, per_sample, step_direction
from lsa_train.attacks.validation import check_choice, check_count, check_unit_interval

#: Losses APGD can maximize by name.
APGD_LOSSES: tuple[str, ...] = ("ce", "dlr")

#: Weight of the new gradient step against the previous displacement (the momentum is 1 - this).
_STEP_WEIGHT = 0.75


@register_attack("apgd")
class APGD(Attack):
    """Auto-PGD from 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks' (Croce & Hein, ICML 2020) [https://arxiv.org/abs/2003.01690].

    Starts at a random point on the sphere of radius ``eps`` (then clipped to the valid range)
    with step size ``2 * eps``, takes gradient steps with momentum
    (``x_{k+1} = P(x_k + 0.75 (z_{k+1} - x_k) + 0.25 (x_k - x_{k-1}))``,
    ``z_{k+1} = P(x_k + eta * direction(grad))``) and checks at checkpoints ``p_j`` whether to
    halve a sample's step size: when the loss went up in at most a fraction ``rho`` of the
    steps since the previous checkpoint, or when the step was not halved at the previous
    checkpoint and the best loss has not improved since. A halving sample restarts from its
    best point. The first checkpoint comes after ``max(int(0.22 * steps), 1)`` steps and the
    gaps shrink by ``max(int(0.03 * steps), 1)`` down to ``max(int(0.06 * steps), 1)``.

    Returned per sample: the highest-loss point found, unless that point is correctly classified
    while another iterate was misclassified (then the last misclassified iterate). With
    ``restarts > 1`` every sample keeps the first restart that fools the model, or else the one
    with the highest loss. Unlike the reference implementation, every restart attacks every
    sample (so batch statistics in ``craft_mode="train"`` see the whole batch). Given the same
    inputs and random start, the iterates equal those of ``pyautoattack``'s ``APGDAttack``.

    Distance Measure: Linf (``norm="linf"``) or L2 (``norm="l2"``).

    Args:
        eps: Maximum perturbation (radius of the ball), ``>= 0``. Required (e.g. ``8/255``).
        steps: Number of iterations, ``>= 1``. Default: ``10`` (our training default; the paper
            evaluates with 100).
        restarts: Number of random restarts, ``>= 1``. Default: ``1``.
        norm: ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        rho: Fraction of loss increases between checkpoints below which (inclusive) the step is
            halved, in ``(0, 1]``. Default: ``0.75``.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (Difference of Logits Ratio, needs at least
            3 classes). Default: ``"ce"``.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        loss_fn: Custom loss ``loss_fn(logits, labels)`` returning per-sample values ``(N,)``;
            replaces ``loss="ce"`` (cannot be combined with ``loss="dlr"``). Default: ``None``.
        craft_mode: ``"eval"``, ``"train"`` or ``"keep"``. Default: ``"eval"``.
        seed: Seed of the random starts; ``None`` uses the global RNG. Default: ``None``.

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, values in ``[0, 1]``.
        - labels: ``(N,)``, int64.
        - output: same as ``images``.

    Example:
        >>> x_adv = APGD(eps=8 / 255, steps=10)(model, images, labels)
    """

    _repr_fields = ("eps", "steps", "restarts", "norm", "rho", "loss")

    def __init__(
        self,
        eps: float,
        steps: int = 10,
        restarts: int = 1,
        norm: str = "linf",
        rho: float = 0.75,
        loss: str = "ce",
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
        self.steps = check_count("steps", steps)
        self.restarts = check_count("restarts", restarts)
        self.norm = check_choice("norm", norm, NORMS)
        self.rho = check_unit_interval("rho", rho)
        self.loss = check_choice("loss", loss, APGD_LOSSES)
        if loss_fn is not None and self.loss != "ce":
            raise ValueError(f"loss={loss!r} and loss_fn are mutually exclusive; pass one of them")
        self._first_checkpoint = max(int(0.22 * self.steps), 1)
        self._min_checkpoint_gap = max(int(0.06 * self.steps), 1)
        self._checkpoint_gap_decrease = max(int(0.03 * self.steps), 1)

    @property
    def num_forward_backward(self) -> int:
        """``steps * restarts``: per restart the start point and ``steps - 1`` iterates get a
        gradient, and the last iterate a forward-only pass."""
        return self.steps * self.restarts

    @property
    def is_random(self) -> bool:
        return True

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        best: tuple[Tensor, Tensor, Tensor] | None = None
        for _ in range(self.restarts):
            candidate = self._single_run(model, images, labels)
            best = candidate if best is None else self._keep_better(best, candidate)
        assert best is not None
        return best[0]

    # -- internals -----------------------------------------------------------------------
    def _sample_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        with autocast_off(logits.device.type):
            if self.loss_fn is not None:
                loss = self.loss_fn(logits, labels)
                if loss.shape != (logits.shape[0],):
                    raise ValueError(
                        f"APGD needs per-sample losses: loss_fn must return shape ({logits.shape[0]},), "
                        f"got {tuple(loss.shape)}"
                    )
                return loss.float()
            if self.loss == "dlr":
                return dlr_loss(logits, labels)
            return cross_entropy_per_sample(logits, labels)

    def _evaluate(
        self, model: nn.Module, x_adv: Tensor, labels: Tensor, need_grad: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Returns per-sample loss, misclassification flags and (if asked) the input gradient."""
        if not need_grad:
            with torch.no_grad():
                logits = self._logits(model, x_adv)
                return self._sample_losses(logits, labels), self._fooled(logits, labels), None
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self._logits(model, x_adv)
        loss = self._sample_losses(logits, labels)
        (grad,) = torch.autograd.grad(loss.sum(), [x_adv])
        return loss.detach(), self._fooled(logits.detach(), labels), grad.detach()

    def _random_start(self, images: Tensor) -> Tensor:
        if self.norm == "linf":
            direction = linf_normalize(self._uniform_like(images, -1.0, 1.0))
        else:
            direction = l2_normalize(self._normal_like(images))
        return self._project(images + self.eps * direction, images)

    def _single_run(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run; returns ``(x_adv, loss at x_adv, fooled at x_adv)``, all per sample."""
        with torch.no_grad():
            x_adv = self._random_start(images)
        loss, fooled, grad = self._evaluate(model, x_adv, labels, need_grad=True)
        assert grad is not None

        # Best (highest-loss) point, and the last misclassified iterate.
        x_best, loss_best, grad_best, best_fooled = x_adv, loss, grad, fooled
        x_fooled, loss_fooled, ever_fooled = x_adv, loss, fooled

        step_size = torch.full_like(loss, 2.0 * self.eps)
        x_prev = x_adv
        # history[t] = loss after t steps, except that, as in the reference implementation, the
        # start point enters the first count with loss 0 (a first step to a positive loss counts
        # as an increase). Matching this keeps our numbers equal to AutoAttack's APGD.
        history = [torch.zeros_like(loss)]
        gap, since_checkpoint = self._first_checkpoint, 0
        best_at_checkpoint = loss_best
        halved_at_checkpoint = torch.ones_like(fooled)

        for i in range(self.steps):
            with torch.no_grad():
                step = per_sample(step_size, images) * step_direction(grad, self.norm)
                z = self._project(x_adv + step, images)
                weight = _STEP_WEIGHT if i > 0 else 1.0
                x_next = self._project(
                    x_adv + weight * (z - x_adv) + (1.0 - weight) * (x_adv - x_prev), images
                )
            x_prev, x_adv = x_adv, x_next

            last = i == self.steps - 1
            loss, fooled, new_grad = self._evaluate(model, x_adv, labels, need_grad=not last)
            history.append(loss)

            with torch.no_grad():
                improved = loss > loss_best
                x_best = torch.where(per_sample(improved, images), x_adv, x_best)
                loss_best = torch.where(improved, loss, loss_best)
                best_fooled = torch.where(improved, fooled, best_fooled)
                x_fooled = torch.where(per_sample(fooled, images), x_adv, x_fooled)
                loss_fooled = torch.where(fooled, loss, loss_fooled)
                ever_fooled = ever_fooled | fooled
                if last:
                    break
                assert new_grad is not None
                grad = new_grad
                grad_best = torch.where(per_sample(improved, images), grad, grad_best)

                since_checkpoint += 1
                if since_checkpoint == gap:
                    went_up = [history[-j] > history[-j - 1] for j in range(1, gap + 1)]
                    increases = torch.stack(went_up).sum(dim=0)
                    oscillating = increases <= gap * self.rho
                    stalled = ~halved_at_checkpoint & (best_at_checkpoint >= loss_best)
                    halve = oscillating | stalled
                    step_size = torch.where(halve, step_size / 2.0, step_size)
                    x_adv = torch.where(per_sample(halve, images), x_best, x_adv)
                    grad = torch.where(per_sample(halve, images), grad_best, grad)
                    halved_at_checkpoint, best_at_checkpoint = halve, loss_best
                    gap = max(gap - self._checkpoint_gap_decrease, self._min_checkpoint_gap)
                    since_checkpoint = 0

        use_fooled = ever_fooled & ~best_fooled
        x_out = torch.where(per_sample(use_fooled, images), x_fooled, x_best)
        loss_out = torch.where(use_fooled, loss_fooled, loss_best)
        return x_out, loss_out, best_fooled | ever_fooled
