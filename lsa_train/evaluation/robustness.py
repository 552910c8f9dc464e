"""Streaming accuracy evaluators: clean, under any attack, FGSM sweeps (R&G score) and PGD.

All evaluators take a ``DataLoader`` or any iterable of ``(x, y)`` batches with inputs in
``[0, 1]``, count correct predictions batch by batch (memory bounded by one batch), run the
model in eval mode (restoring every submodule's mode afterwards) and never touch parameter
gradients. Accuracies are fractions in ``[0, 1]``; only :func:`rg_score` is in percent.

Robust accuracy here is the accuracy on the adversarial inputs, ``mean(argmax f(x_adv) == y)``,
as in the LSA paper and torchattacks. AutoAttack instead counts a sample as robust only if it
is also classified correctly when clean; the two differ only on samples that are misclassified
clean but classified correctly after the attack (rare for loss-maximizing attacks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsa_train.attacks import PGD
from lsa_train.evaluation.utils import Batches, check_eps_value, eval_mode, iter_batches, resolve_device

#: The LSA paper's FGSM grid (MNIST / Fashion-MNIST / moons), Linf radii in input units ([0, 1] scale).
PAPER_EPS_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

#: Multiples of the trained-for eps that make the default FGSM grid: 0, 1, ..., 5 x eps (the paper's grid
#: for eps 0.1).
EPS_MULTIPLES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)


def eps_multiples_grid(
    eps: float, multiples: Iterable[float] = EPS_MULTIPLES, also: Iterable[float] = ()
) -> tuple[float, ...]:
    """The FGSM grid of a model trained at ``eps``: ``multiples`` x ``eps``, plus the radii in ``also``
    (e.g. the PGD eps, so that the masking checks compare FGSM and PGD at the same radius), sorted and
    capped at 1 (the whole [0, 1] input box); rounded to 10 digits so that 3 x 0.1 is 0.3.

    Args:
        eps: The training budget (Linf, input units); 0 gives ``(0.0,)`` plus ``also``.
        multiples: Factors of ``eps``. Default: :data:`EPS_MULTIPLES`.
        also: Further radii to include.
    """
    eps = check_eps_value("eps", eps)
    values = {min(1.0, round(float(k) * eps, 10)) for k in multiples}
    values |= {min(1.0, check_eps_value("every eps of the grid", e)) for e in also}
    return tuple(sorted(values))


#: ``attack(model, images, labels) -> adversarial images``, e.g. any :class:`lsa_train.attacks.Attack`.
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _count_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(dim=1) == y).sum().item())


def _finish(correct: int, total: int) -> float:
    if total == 0:
        raise ValueError("the data yielded no samples")
    return correct / total


def clean_accuracy(
    model: nn.Module,
    batches: Batches,
    *,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> float:
    """Accuracy of ``model`` on clean inputs.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: ``DataLoader`` or iterable of ``(x, y)`` batches; ``x`` in ``[0, 1]``, ``y`` ``(B,)``
            integer labels.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.

    Returns:
        Fraction of correctly classified samples, in ``[0, 1]``.

    Raises:
        ValueError: If the data yields no samples or a batch is malformed.
    """
    correct, total = clean_counts(model, batches, device=device, max_samples=max_samples)
    return _finish(correct, total)


def clean_counts(
    model: nn.Module,
    batches: Batches,
    *,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> tuple[int, int]:
    """``(correct, total)`` clean counts; like :func:`clean_accuracy` but also gives the sample count."""
    device = resolve_device(model, device)
    correct = total = 0
    with eval_mode(model):
        for x, y in iter_batches(batches, device, max_samples):
            correct += _count_correct(model, x, y)
            total += y.shape[0]
    return correct, total


def attack_accuracy(
    model: nn.Module,
    batches: Batches,
    attack: AttackFn,
    *,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> float:
    """Accuracy of ``model`` on the adversarial inputs ``attack`` crafts for every batch.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: ``DataLoader`` or iterable of ``(x, y)`` batches; ``x`` in ``[0, 1]``.
        attack: Called as ``attack(model, x, y)`` with the model in eval mode; returns the
            adversarial inputs, same shape as ``x`` (e.g. ``create_attack("pgd", eps=0.1)``).
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.

    Returns:
        Fraction of adversarial inputs classified as their true label, in ``[0, 1]``.

    Raises:
        ValueError: If the data yields no samples, a batch is malformed, or the attack returns
            a tensor of the wrong shape.
    """
    correct, _ = correct_mask(model, batches, attack, device=device, max_samples=max_samples)
    return _finish(int(correct.sum().item()), int(correct.numel()))


def correct_mask(
    model: nn.Module,
    batches: Batches,
    attack: AttackFn | None = None,
    *,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per sample, whether ``model`` classifies ``attack(model, x, y)`` (or ``x`` itself) correctly.

    The per-sample form of :func:`attack_accuracy` and :func:`clean_accuracy`, for worst-case
    bookkeeping over several attacks (:mod:`lsa_train.evaluation.worst_case`): sample ``i`` is the
    ``i``-th sample of the stream, so two calls on the same data line up.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: ``DataLoader`` or iterable of ``(x, y)`` batches; ``x`` in ``[0, 1]``.
        attack: ``attack(model, x, y) -> x_adv`` (model in eval mode), or ``None`` for clean inputs.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.

    Returns:
        ``correct`` ``(n,)`` bool and the labels ``(n,)`` int64, both on the CPU, in stream order.

    Raises:
        ValueError: If the data yields no samples, a batch is malformed, or the attack returns
            a tensor of the wrong shape.
    """
    device = resolve_device(model, device)
    masks: list[Tensor] = []
    labels: list[Tensor] = []
    with eval_mode(model):
        for x, y in iter_batches(batches, device, max_samples):
            x_in = x
            if attack is not None:
                x_in = attack(model, x, y)
                if not isinstance(x_in, Tensor) or x_in.shape != x.shape:
                    shape = tuple(x_in.shape) if isinstance(x_in, Tensor) else type(x_in).__name__
                    raise ValueError(f"the attack must return a tensor shaped like x {tuple(x.shape)}, got {shape}")
            with torch.no_grad():
                masks.append((model(x_in.detach()).argmax(dim=1) == y).cpu())
            labels.append(y.cpu())
    if not masks:
        raise ValueError("the data yielded no samples")
    return torch.cat(masks), torch.cat(labels)


def _normalize_grid(eps_grid: Iterable[float]) -> list[float]:
    grid: list[float] = []
    for eps in eps_grid:
        value = check_eps_value("every eps in eps_grid", eps)
        if value not in grid:
            grid.append(value)
    if not grid:
        raise ValueError("eps_grid is empty")
    return grid


def _input_gradient_sign(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``sign(grad_x CE(model(x), y))`` for a batch, gradients w.r.t. the input only."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach()
        x = (x.clone() if x.is_inference() else x).requires_grad_(True)
        y = y.clone() if y.is_inference() else y
        loss = F.cross_entropy(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, [x])
    return grad.detach().sign()


def fgsm_sweep(
    model: nn.Module,
    batches: Batches,
    eps_grid: Iterable[float] = PAPER_EPS_GRID,
    *,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> dict[float, float]:
    """FGSM accuracy for every radius of ``eps_grid`` in one pass over the data.

    The FGSM direction ``sign(grad_x CE)`` does not depend on eps, so each batch costs one
    forward+backward pass plus one forward pass per eps. The adversarial inputs are exactly
    those of :class:`lsa_train.attacks.FGSM`: ``clamp(x + eps * sign(grad), clip_min, clip_max)``
    with the gradient of the mean cross-entropy taken in eval mode.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: ``DataLoader`` or iterable of ``(x, y)`` batches; ``x`` in ``[clip_min, clip_max]``.
        eps_grid: Linf radii in input units, each ``>= 0`` (duplicates dropped). ``0`` gives the
            clean accuracy. Default: the LSA paper's ``(0, 0.1, 0.2, 0.3, 0.4, 0.5)``.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.

    Returns:
        ``{eps: accuracy}`` in the order of ``eps_grid``, accuracies in ``[0, 1]``.

    Raises:
        ValueError: If the grid is empty or has a negative / non-finite eps, or the data yields
            no samples.
    """
    grid = _normalize_grid(eps_grid)
    device = resolve_device(model, device)
    correct = dict.fromkeys(grid, 0)
    total = 0
    with eval_mode(model):
        for x, y in iter_batches(batches, device, max_samples):
            direction = _input_gradient_sign(model, x, y) if any(eps > 0 for eps in grid) else None
            for eps in grid:
                x_adv = x if eps == 0 or direction is None else (x + eps * direction).clamp(clip_min, clip_max)
                correct[eps] += _count_correct(model, x_adv, y)
            total += y.shape[0]
    if total == 0:
        raise ValueError("the data yielded no samples")
    return {eps: correct[eps] / total for eps in grid}


def rg_score(sweep: Mapping[float, float]) -> float:
    """The LSA paper's R&G score: the sum of the accuracies of an FGSM sweep, in percent.

    E.g. MNIST, normal training, eps in ``{0, .1, .2, .3, .4, .5}``:
    ``98.82 + 82.1 + 47.2 + 17.87 + 6.96 + 4.25 = 257.2``. Scores are comparable only between
    sweeps over the same grid.

    Args:
        sweep: ``{eps: accuracy}`` with accuracies as fractions in ``[0, 1]`` (as returned by
            :func:`fgsm_sweep`); must include ``eps = 0`` (the clean accuracy).

    Returns:
        ``100 * sum(sweep.values())``.

    Raises:
        ValueError: If ``eps = 0`` is not in the sweep, or an accuracy is outside ``[0, 1]``.
    """
    if not any(float(eps) == 0.0 for eps in sweep):
        raise ValueError(
            f"the R&G score is defined over a grid that includes eps=0 (the clean accuracy); got eps {sorted(sweep)}"
        )
    for eps, acc in sweep.items():
        if not 0.0 <= float(acc) <= 1.0:
            raise ValueError(f"accuracies must be fractions in [0, 1], got {acc!r} at eps={eps!r}")
    return 100.0 * sum(float(acc) for acc in sweep.values())


def pgd_attack(
    eps: float,
    alpha: float | None = None,
    steps: int = 20,
    restarts: int = 1,
    norm: str = "linf",
    *,
    random_start: bool = True,
    seed: int | None = None,
) -> PGD:
    """The :class:`lsa_train.attacks.PGD` that :func:`pgd_accuracy` runs (same arguments)."""
    return PGD(eps, alpha=alpha, steps=steps, random_start=random_start, restarts=restarts, norm=norm, seed=seed)


def pgd_accuracy(
    model: nn.Module,
    batches: Batches,
    eps: float,
    alpha: float | None = None,
    steps: int = 20,
    restarts: int = 1,
    norm: str = "linf",
    *,
    random_start: bool = True,
    seed: int | None = None,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
) -> float:
    """Accuracy under :class:`lsa_train.attacks.PGD` (cross-entropy, random start).

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: ``DataLoader`` or iterable of ``(x, y)`` batches; ``x`` in ``[0, 1]``.
        eps: Radius of the ball (Linf or per-sample L2), in input units, ``>= 0``.
        alpha: Step size; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``.
        steps: Gradient steps per restart. Default: ``20``.
        restarts: Random restarts; a sample counts as broken if any restart breaks it. Default: ``1``.
        norm: ``"linf"`` or ``"l2"``. Default: ``"linf"``.
        random_start: Start from a uniform random point of the ball. Default: ``True``.
        seed: Seed of the random starts (a fresh generator per batch); ``None`` uses the global RNG.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.

    Returns:
        Accuracy on the PGD adversarial inputs, in ``[0, 1]``.
    """
    attack = pgd_attack(eps, alpha, steps, restarts, norm, random_start=random_start, seed=seed)
    return attack_accuracy(model, batches, attack, device=device, max_samples=max_samples)
