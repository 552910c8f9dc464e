"""Gradient-masking checks: signs that gradient-based accuracies overstate robustness.

A model can look robust to FGSM/PGD because its gradients are useless (zero, shattered,
saturated or randomized) rather than because no adversarial example exists nearby
(Athalye et al., ICML 2018, https://arxiv.org/abs/1802.00420; Carlini et al. 2019, "On
Evaluating Adversarial Robustness", https://arxiv.org/abs/1902.06705). The checks here flag
the classic symptoms, all in the Linf threat model on inputs in ``[0, 1]``:

(a) iterative PGD is weaker than single-step FGSM at the same eps;
(b) FGSM accuracy does not fall as eps grows (non-monotone, or barely below clean at the
    largest eps);
(c) a black-box, gradient-free attack (Square) beats white-box PGD;
(d) PGD at a huge eps (``1.0`` covers the whole input box) leaves accuracy well above 0.

Each check holds only under a precondition, and :func:`run_masking_checks` skips it, with the
reason, when that does not hold (see :data:`CHECKS`):

(a) PGD can reach the radius: ``steps * alpha >= eps`` (a PGD that cannot move as far as FGSM
    is weaker by construction, not because of masking);
(b) rises need at least two radii; "barely below clean at the largest eps" needs a largest
    radius of at least ``drop_min_eps`` (default ``0.5``: from there every input in ``[0, 1]``
    can be moved to the same mid-grey input, so only a constant classifier keeps its clean
    accuracy; a robust model may well lose under 2 points at a small eps) and a clean accuracy
    above ``tol``;
(c) ``eps > 0`` and a Square budget;
(d) ``large_eps`` covers the whole input box (``>= 1`` on ``[0, 1]``), where every sample can
    be moved into another class's region.

Each message starts with ``"Possible gradient masking: "``. An empty list means no symptom was
found, not that the evaluation is sound. Accuracies and tolerances are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from lsa_train.attacks import PGD
from lsa_train.attacks.pgd import default_step_size
from lsa_train.evaluation.robustness import fgsm_sweep as run_fgsm_sweep
from lsa_train.evaluation.robustness import pgd_accuracy
from lsa_train.evaluation.utils import (
    Batches,
    FlatToImage,
    check_eps_value,
    check_tolerance,
    eval_mode,
    frozen_parameters,
    isolated_rng,
    iter_batches,
    require_reiterable,
    resolve_device,
)
from lsa_train.utils.subsets import batch_labels, select_stratified

#: Prefix of every warning produced by the checks.
PREFIX = "Possible gradient masking: "
#: Square Attack backends accepted by :func:`square_accuracy`.
SQUARE_BACKENDS: tuple[str, ...] = ("auto", "torchattacks", "pyautoattack")
#: The checks of :func:`run_masking_checks`, by key, as named in its ``checks_run`` / ``checks_skipped``.
CHECKS: dict[str, str] = {
    "pgd_vs_fgsm": "(a) PGD no weaker than FGSM",
    "fgsm_rises": "(b) FGSM accuracy never rises with eps",
    "fgsm_drop": "(b) FGSM accuracy drops at the largest eps",
    "blackbox_vs_whitebox": "(c) Square (black-box) no stronger than PGD",
    "large_eps": "(d) PGD at a huge eps reaches about 0",
}
#: Default smallest radius at which check (b) expects FGSM to cost accuracy (see the module doc).
DROP_MIN_EPS = 0.5


def _pct(value: float) -> str:
    return f"{100.0 * value:.2f}%"


def _lookup(sweep: Mapping[float, float], eps: float) -> float | None:
    for key, acc in sweep.items():
        if abs(float(key) - eps) <= 1e-9:
            return float(acc)
    return None


# -- checks on numbers ------------------------------------------------------------------------
def check_pgd_vs_fgsm(fgsm_acc: float, pgd_acc: float, eps: float, tol: float = 0.02) -> list[str]:
    """Check (a): PGD must not leave a higher accuracy than FGSM at the same eps.

    PGD with a random start and many steps is a strictly stronger search than one FGSM step;
    if it does worse, the loss surface is likely obfuscated (e.g. gradients that point the
    right way only at ``x`` itself, or a random start that lands in a flat region).

    Args:
        fgsm_acc: FGSM accuracy at ``eps``.
        pgd_acc: PGD accuracy at ``eps`` on the same samples.
        eps: The Linf radius, for the message.
        tol: Allowed excess of PGD over FGSM (fraction). Default: ``0.02`` (2 points).

    Returns:
        One warning, or an empty list.
    """
    tol = check_tolerance("tol", tol)
    if pgd_acc > fgsm_acc + tol:
        return [
            f"{PREFIX}PGD accuracy {_pct(pgd_acc)} is higher than FGSM accuracy {_pct(fgsm_acc)} at eps={eps:g} "
            f"(tolerance {_pct(tol)}): the iterative attack is weaker than a single gradient step."
        ]
    return []


def check_fgsm_monotone(
    sweep: Mapping[float, float],
    tol: float = 0.02,
    clean_acc: float | None = None,
    drop_min_eps: float = DROP_MIN_EPS,
) -> list[str]:
    """Check (b): FGSM accuracy must fall as eps grows.

    Flags every rise between consecutive radii larger than ``tol``, and an accuracy at the
    largest radius that is still within ``tol`` of the clean accuracy. The second test runs only
    when the largest radius is at least ``drop_min_eps`` (a radius at which every model that is
    not constant must lose accuracy; the paper grid goes up to 0.5) and the clean accuracy is
    above ``tol``.

    Args:
        sweep: ``{eps: accuracy}`` from :func:`~lsa_train.evaluation.fgsm_sweep`.
        tol: Tolerance in accuracy (fraction). Default: ``0.02``.
        clean_acc: Clean accuracy; default: ``sweep[0]`` (if the grid has no 0, the smallest eps's
            accuracy).
        drop_min_eps: Smallest largest-radius for the second test. Default: ``0.5``.

    Returns:
        The warnings (possibly empty).
    """
    tol = check_tolerance("tol", tol)
    drop_min_eps = check_eps_value("drop_min_eps", drop_min_eps)
    if not sweep:
        return []
    items = sorted((float(eps), float(acc)) for eps, acc in sweep.items())
    messages: list[str] = []
    for (eps_lo, acc_lo), (eps_hi, acc_hi) in itertools.pairwise(items):
        if acc_hi > acc_lo + tol:
            messages.append(
                f"{PREFIX}FGSM accuracy rises from {_pct(acc_lo)} at eps={eps_lo:g} to {_pct(acc_hi)} at "
                f"eps={eps_hi:g} (tolerance {_pct(tol)}): a larger perturbation should not help the model."
            )
    if clean_acc is None:
        clean_acc = _lookup(sweep, 0.0)
        if clean_acc is None:
            clean_acc = items[0][1]
    eps_max, acc_max = items[-1]
    if eps_max > 0 and eps_max >= drop_min_eps and clean_acc > tol and acc_max >= clean_acc - tol:
        messages.append(
            f"{PREFIX}FGSM accuracy at the largest eps={eps_max:g} is {_pct(acc_max)}, not below the clean accuracy "
            f"{_pct(clean_acc)} by more than {_pct(tol)}: the FGSM gradient gives the attack no useful direction."
        )
    return messages


def check_blackbox_vs_whitebox(
    blackbox_acc: float,
    whitebox_acc: float,
    eps: float,
    tol: float = 0.02,
    blackbox: str = "Square (black-box)",
    whitebox: str = "PGD",
) -> list[str]:
    """Check (c): a gradient-free attack must not beat a white-box gradient attack.

    Args:
        blackbox_acc: Accuracy under the black-box attack.
        whitebox_acc: Accuracy under the white-box attack on the same samples.
        eps: The Linf radius, for the message.
        tol: Allowed excess of the white-box accuracy over the black-box one. Default: ``0.02``.
        blackbox: Name of the black-box attack, for the message.
        whitebox: Name of the white-box attack, for the message.

    Returns:
        One warning, or an empty list.
    """
    tol = check_tolerance("tol", tol)
    if blackbox_acc < whitebox_acc - tol:
        return [
            f"{PREFIX}{blackbox} accuracy {_pct(blackbox_acc)} is lower than {whitebox} accuracy "
            f"{_pct(whitebox_acc)} at eps={eps:g} (tolerance {_pct(tol)}): the gradients mislead the white-box attack."
        ]
    return []


def check_large_eps(acc: float, eps: float, max_acc: float = 0.1) -> list[str]:
    """Check (d): an attack with a huge budget must drive the accuracy to about 0.

    At ``eps = 1`` on ``[0, 1]`` inputs the Linf ball is the whole input box, so every sample
    can be moved anywhere; only a constant classifier keeps any accuracy.

    Args:
        acc: Accuracy under PGD at ``eps``.
        eps: The (huge) radius.
        max_acc: Highest accuracy that passes. Default: ``0.1``.

    Returns:
        One warning, or an empty list.
    """
    max_acc = check_tolerance("max_acc", max_acc)
    if acc > max_acc:
        return [
            f"{PREFIX}PGD accuracy at the huge eps={eps:g} is {_pct(acc)} (expected about 0, threshold "
            f"{_pct(max_acc)}): gradient steps cannot reach inputs an unbounded attacker trivially finds."
        ]
    return []


# -- Square Attack ----------------------------------------------------------------------------
def _square_attacker(
    model: nn.Module,
    eps: float,
    n_queries: int,
    p_init: float,
    restarts: int,
    seed: int,
    device: torch.device,
    backend: str,
) -> Callable[[Tensor, Tensor], Tensor]:
    """``attack(x_img, y) -> x_adv_img`` for image-shaped inputs, from torchattacks or pyautoattack."""
    if backend in ("auto", "torchattacks"):
        try:
            import torchattacks
        except ImportError:
            if backend == "torchattacks":
                raise ImportError("Square Attack with backend='torchattacks' needs: pip install torchattacks") from None
        else:
            attack = torchattacks.Square(
                model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=restarts, p_init=p_init, seed=seed
            )
            attack.set_device(device)
            return attack
    try:
        from pyautoattack.square import SquareAttack
    except ImportError:
        raise ImportError(
            "Square Attack needs torchattacks or pyautoattack: pip install torchattacks (or pyautoattack)"
        ) from None
    square = SquareAttack(
        model, norm="Linf", n_queries=n_queries, eps=eps, p_init=p_init, n_restarts=restarts, seed=seed, device=device
    )
    return square.perturb


@dataclass
class PairedAccuracy:
    """Accuracies of two attacks on the same samples.

    Attributes:
        blackbox: Accuracy under Square Attack.
        whitebox: Accuracy under PGD.
        blackbox_only: Fraction of samples broken by Square but not by PGD.
        n_samples: Samples evaluated.
        blackbox_correct: ``(n_samples,)`` bool: Square's adversarial input of each sample was classified
            correctly (for the worst case per sample, :mod:`lsa_train.evaluation.worst_case`).
        indices: ``(n_samples,)`` int64: the position of each of those samples in the evaluated stream.
        blackbox_seconds: Time spent in Square, seconds.
    """

    blackbox: float
    whitebox: float
    blackbox_only: float
    n_samples: int
    blackbox_correct: Tensor | None = None
    indices: Tensor | None = None
    blackbox_seconds: float = 0.0


def square_vs_pgd(
    model: nn.Module,
    batches: Batches,
    eps: float,
    *,
    n_queries: int = 1000,
    p_init: float = 0.8,
    restarts: int = 1,
    pgd_steps: int = 20,
    pgd_alpha: float | None = None,
    pgd_restarts: int = 1,
    seed: int = 0,
    backend: str = "auto",
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    square_seed: int | None = None,
) -> PairedAccuracy:
    """Linf Square Attack (black-box, margin loss) and PGD accuracies on the same samples.

    Square Attack (Andriushchenko et al., ECCV 2020, https://arxiv.org/abs/1912.00049) only
    queries the model's logits. Inputs that are not images ``(N, C, H, W)`` are attacked as
    ``(N, 1, 1, D)`` images. The global RNG state is restored afterwards (the implementations
    reseed it).

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: ``DataLoader`` or iterable of ``(x, y)`` batches; ``x`` in ``[0, 1]``.
        eps: Linf radius in input units.
        n_queries: Square Attack's query budget per sample and restart. Default: ``1000``.
        p_init: Initial fraction of pixels changed per query. Default: ``0.8``.
        restarts: Square Attack restarts. Default: ``1``.
        pgd_steps: PGD steps. Default: ``20``.
        pgd_alpha: PGD step size; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``.
        pgd_restarts: PGD restarts. Default: ``1``.
        seed: Seed of PGD, and of Square unless ``square_seed`` is given. Default: ``0``.
        backend: ``"auto"`` (torchattacks if installed, else pyautoattack), ``"torchattacks"`` or
            ``"pyautoattack"``.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.
        square_seed: Seed of Square; ``None``: ``seed``.

    Returns:
        A :class:`PairedAccuracy`, with Square's per-sample results.
    """
    eps = check_eps_value("eps", eps)
    if backend not in SQUARE_BACKENDS:
        raise ValueError(f"backend must be one of {SQUARE_BACKENDS}, got {backend!r}")
    device = resolve_device(model, device)
    pgd = PGD(eps, alpha=pgd_alpha, steps=pgd_steps, restarts=pgd_restarts, seed=seed)
    square_ok = pgd_ok = square_only = total = 0
    square_seed = seed if square_seed is None else int(square_seed)
    square_masks: list[Tensor] = []
    square_seconds = 0.0
    attackers: dict[tuple[int, ...], tuple[nn.Module, Callable[[Tensor, Tensor], Tensor]]] = {}
    with eval_mode(model), isolated_rng(device):
        for x, y in iter_batches(batches, device, max_samples):
            shape = tuple(x.shape[1:])
            if shape not in attackers:
                image_model = model if x.ndim == 4 else FlatToImage(model, shape)
                attackers[shape] = (
                    image_model,
                    _square_attacker(image_model, eps, int(n_queries), p_init, restarts, square_seed, device, backend),
                )
            image_model, square = attackers[shape]
            x_img = x if x.ndim == 4 else FlatToImage.to_image(x)
            started = time.perf_counter()
            with frozen_parameters(model):
                x_square = square(x_img, y).detach()
            square_seconds += time.perf_counter() - started
            x_pgd = pgd(model, x, y)
            with torch.no_grad():
                sq = image_model(x_square).argmax(dim=1) == y
                pg = model(x_pgd).argmax(dim=1) == y
            square_ok += int(sq.sum().item())
            pgd_ok += int(pg.sum().item())
            square_only += int((~sq & pg).sum().item())
            square_masks.append(sq.cpu())
            total += y.shape[0]
    if total == 0:
        raise ValueError("the data yielded no samples")
    return PairedAccuracy(square_ok / total, pgd_ok / total, square_only / total, total,
                          blackbox_correct=torch.cat(square_masks), indices=torch.arange(total),
                          blackbox_seconds=square_seconds)


# -- all checks -------------------------------------------------------------------------------
@dataclass
class MaskingCheckResult:
    """Outcome of :func:`run_masking_checks`.

    Attributes:
        warnings: Human-readable warnings, each starting with ``"Possible gradient masking: "``.
        fgsm_sweep: The FGSM sweep used by checks (a) and (b).
        pgd_accuracy: PGD accuracy at ``eps`` used by check (a).
        square: Square vs PGD accuracies of check (c), or ``None`` if skipped.
        large_eps_accuracy: PGD accuracy at the huge eps of check (d), or ``None`` if skipped.
        settings: The parameters of the checks (eps, tolerances, budgets).
        checks_run: Keys of :data:`CHECKS` that ran.
        checks_skipped: ``{key of CHECKS: reason}`` for the checks whose precondition did not hold.
    """

    warnings: list[str]
    fgsm_sweep: dict[float, float]
    pgd_accuracy: float
    square: PairedAccuracy | None = None
    large_eps_accuracy: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    checks_run: list[str] = field(default_factory=list)
    checks_skipped: dict[str, str] = field(default_factory=dict)


def run_masking_checks(
    model: nn.Module,
    batches: Batches,
    eps: float,
    *,
    fgsm_sweep: Mapping[float, float] | None = None,
    pgd_acc: float | None = None,
    tol: float = 0.02,
    pgd_steps: int = 20,
    pgd_alpha: float | None = None,
    pgd_restarts: int = 1,
    square_queries: int | None = 1000,
    square_max_samples: int | None = 500,
    large_eps: float | None = 1.0,
    large_eps_max_acc: float = 0.1,
    drop_min_eps: float = DROP_MIN_EPS,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    square_seed: int | None = None,
    labels: Tensor | None = None,
) -> MaskingCheckResult:
    """Runs the gradient-masking checks (a)-(d) and returns warnings plus the numbers behind them.

    A check whose precondition (module docstring) does not hold is not run; the result names it
    with the reason in ``checks_skipped``.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``.
        batches: Re-iterable data (``DataLoader`` or list of ``(x, y)`` batches), ``x`` in ``[0, 1]``.
        eps: The Linf radius of interest (input units).
        fgsm_sweep: A precomputed FGSM sweep on the same samples (reused by (a) and (b)); computed
            over ``(0, eps / 2, eps)`` if ``None``. If it lacks ``eps``, FGSM at ``eps`` is computed.
        pgd_acc: A precomputed PGD accuracy at ``eps`` on the same samples; computed if ``None``.
        tol: Tolerance of checks (a)-(c), a fraction. Default: ``0.02`` (2 points).
        pgd_steps: PGD steps for everything computed here. Default: ``20``.
        pgd_alpha: PGD step size at ``eps``; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``
            (the same rule at ``large_eps`` for (d)).
        pgd_restarts: PGD restarts. Default: ``1``.
        square_queries: Square Attack query budget for check (c); ``None`` skips (c).
            Default: ``1000``.
        square_max_samples: Check (c) uses a seeded stratified subset of this many of the evaluated
            samples (Square is costly; :func:`~lsa_train.utils.subsets.stratified_subset` with ``seed``, so
            it is nested with an AutoAttack subset of the same seed); ``None`` for all evaluated samples.
            Default: ``500``.
        large_eps: Radius of check (d); ``None`` skips (d). Default: ``1.0`` (the whole ``[0, 1]`` box).
        large_eps_max_acc: Highest accuracy at ``large_eps`` that passes (d). Default: ``0.1``.
        drop_min_eps: Smallest largest-radius of the sweep at which (b) expects FGSM to cost
            accuracy. Default: ``0.5``.
        seed: Seed of PGD, and of Square unless ``square_seed`` is given. Default: ``0``.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all (for a stratified
            subset, pass a subset of the data: :func:`~lsa_train.evaluation.evaluate_robustness` does).
        square_seed: Seed of Square's random search; ``None``: ``seed``. Its sample subset is drawn with
            ``seed``, so it stays nested in the evaluation's other subsets.
        labels: ``(n,)`` labels of the evaluated samples in data order, if known (saves a pass over the
            data to draw the Square subset).

    Returns:
        A :class:`MaskingCheckResult`; ``.warnings`` is empty when no check fired.
    """
    require_reiterable(batches, "run_masking_checks")
    eps = check_eps_value("eps", eps)
    tol = check_tolerance("tol", tol)
    common: dict[str, Any] = {"device": device, "max_samples": max_samples}
    sweep, fgsm_at_eps, pgd_acc = _reference_numbers(
        model, batches, eps, fgsm_sweep, pgd_acc, pgd_steps, pgd_alpha, pgd_restarts, seed, common
    )
    drop_min_eps = check_eps_value("drop_min_eps", drop_min_eps)
    verdicts = _Verdicts()
    _check_a(verdicts, fgsm_at_eps, pgd_acc, eps, tol, pgd_steps, pgd_alpha)
    _check_b(verdicts, sweep, tol, drop_min_eps)
    square, square_subset = _check_c(
        verdicts, model, batches, eps, tol, square_queries=square_queries, square_max_samples=square_max_samples,
        pgd_steps=pgd_steps, pgd_alpha=pgd_alpha, pgd_restarts=pgd_restarts, seed=seed, square_seed=square_seed,
        device=device, max_samples=max_samples, labels=labels,
    )
    large_acc = _check_d(verdicts, model, batches, large_eps, large_eps_max_acc, pgd_steps, pgd_restarts, seed, common)
    settings = {
        "eps": eps,
        "tol": tol,
        "pgd_steps": pgd_steps,
        "pgd_alpha": pgd_alpha,
        "pgd_restarts": pgd_restarts,
        "square_queries": square_queries,
        "square_max_samples": square_max_samples,
        "square_subset": square_subset,
        "large_eps": large_eps,
        "large_eps_max_acc": large_eps_max_acc,
        "drop_min_eps": drop_min_eps,
        "seed": seed,
        "square_seed": seed if square_seed is None else int(square_seed),
    }
    return MaskingCheckResult(verdicts.warnings, sweep, float(pgd_acc), square, large_acc, settings, verdicts.run,
                              verdicts.skipped)


# -- the phases of run_masking_checks, in the order it runs them ----------------------------------------------
@dataclass
class _Verdicts:
    """What the checks said, in the order (a)-(d): their warnings, which ran, which were skipped and why."""

    warnings: list[str] = field(default_factory=list)
    run: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _reference_numbers(
    model: nn.Module,
    batches: Batches,
    eps: float,
    fgsm_sweep: Mapping[float, float] | None,
    pgd_acc: float | None,
    pgd_steps: int,
    pgd_alpha: float | None,
    pgd_restarts: int,
    seed: int,
    common: Mapping[str, Any],
) -> tuple[dict[float, float], float, float]:
    """Phase 1: the FGSM sweep, FGSM at ``eps`` and PGD at ``eps``, reused when given, computed when not.

    Returns:
        ``{eps: accuracy}`` (over ``(0, eps / 2, eps)`` when computed here), FGSM's accuracy at ``eps`` and PGD's,
        all fractions in ``[0, 1]``.
    """
    sweep = dict(fgsm_sweep) if fgsm_sweep is not None else None
    if sweep is None:
        sweep = run_fgsm_sweep(model, batches, (0.0, eps / 2, eps), **common)
    fgsm_at_eps = _lookup(sweep, eps)
    if fgsm_at_eps is None:
        fgsm_at_eps = run_fgsm_sweep(model, batches, (eps,), **common)[eps]
    if pgd_acc is None:
        pgd_acc = pgd_accuracy(
            model, batches, eps, alpha=pgd_alpha, steps=pgd_steps, restarts=pgd_restarts, seed=seed, **common
        )
    return sweep, fgsm_at_eps, pgd_acc


def _check_a(
    verdicts: _Verdicts,
    fgsm_at_eps: float,
    pgd_acc: float,
    eps: float,
    tol: float,
    pgd_steps: int,
    pgd_alpha: float | None,
) -> None:
    """Phase 2, check (a) PGD vs FGSM at ``eps``: run only if PGD's steps can travel ``eps`` (input units)."""
    reach = pgd_steps * (pgd_alpha if pgd_alpha is not None else default_step_size(eps, pgd_steps))
    if eps <= 0:
        verdicts.skipped["pgd_vs_fgsm"] = "eps=0: no attack to compare"
    elif reach < eps * (1 - 1e-6):
        verdicts.skipped["pgd_vs_fgsm"] = (
            f"PGD's {pgd_steps} steps of {reach / pgd_steps:g} travel at most {reach:g} < eps={eps:g}, so it is "
            "weaker than FGSM by construction (raise the PGD steps or alpha)"
        )
    else:
        verdicts.run.append("pgd_vs_fgsm")
        verdicts.warnings += check_pgd_vs_fgsm(fgsm_at_eps, pgd_acc, eps, tol)


def _check_b(verdicts: _Verdicts, sweep: Mapping[float, float], tol: float, drop_min_eps: float) -> None:
    """Phase 3, check (b) on the FGSM sweep ``{eps: accuracy}``: rises need two radii; the drop at the largest
    radius needs one of at least ``drop_min_eps`` and a clean accuracy above ``tol``."""
    radii = sorted(float(e) for e in sweep)
    if len(radii) >= 2:
        verdicts.run.append("fgsm_rises")
    else:
        verdicts.skipped["fgsm_rises"] = f"the FGSM sweep has {len(radii)} radius (needs 2)"
    clean_acc = _lookup(sweep, 0.0)
    clean_acc = clean_acc if clean_acc is not None else float(sweep[min(sweep, key=float)]) if sweep else 0.0
    if not radii or radii[-1] < drop_min_eps:
        verdicts.skipped["fgsm_drop"] = (
            f"the largest FGSM radius {radii[-1] if radii else 0:g} is below {drop_min_eps:g}, where a model that "
            "is not masking may keep its clean accuracy (add a larger radius to the sweep)"
        )
    elif clean_acc <= tol:
        verdicts.skipped["fgsm_drop"] = f"the clean accuracy {_pct(clean_acc)} leaves nothing to lose"
    else:
        verdicts.run.append("fgsm_drop")
    verdicts.warnings += check_fgsm_monotone(sweep, tol, drop_min_eps=drop_min_eps)


def _check_c(
    verdicts: _Verdicts,
    model: nn.Module,
    batches: Batches,
    eps: float,
    tol: float,
    *,
    square_queries: int | None,
    square_max_samples: int | None,
    pgd_steps: int,
    pgd_alpha: float | None,
    pgd_restarts: int,
    seed: int,
    square_seed: int | None,
    device: torch.device | str | None,
    max_samples: int | None,
    labels: Tensor | None,
) -> tuple[PairedAccuracy | None, str | None]:
    """Phase 4, check (c) Square vs PGD at ``eps``, on a stratified subset drawn with ``seed``.

    Returns:
        The paired accuracies, with Square's ``indices`` as positions in the evaluated stream, and the
        subset's description; ``(None, None)`` when skipped (no budget, or ``eps = 0``).
    """
    if square_queries is None:
        verdicts.skipped["blackbox_vs_whitebox"] = "no Square budget (square_queries=None)"
        return None, None
    if eps <= 0:
        verdicts.skipped["blackbox_vs_whitebox"] = "eps=0: no attack to compare"
        return None, None
    evaluated = labels if labels is not None else batch_labels(batches)[:max_samples]
    selection = select_stratified(batches, evaluated, square_max_samples, seed)
    # nothing left out: the first max_samples of the stream are the evaluated ones
    square_batches, limit = (selection.batches, None) if selection.left_out else (batches, max_samples)
    square = square_vs_pgd(
        model,
        square_batches,
        eps,
        n_queries=square_queries,
        pgd_steps=pgd_steps,
        pgd_alpha=pgd_alpha,
        pgd_restarts=pgd_restarts,
        seed=seed,
        device=device,
        max_samples=limit,
        square_seed=square_seed,
    )
    if selection.left_out and square.indices is not None:  # positions in the subset -> in the evaluated stream
        square = replace(square, indices=selection.positions[square.indices])
    verdicts.run.append("blackbox_vs_whitebox")
    verdicts.warnings += check_blackbox_vs_whitebox(square.blackbox, square.whitebox, eps, tol)
    return square, selection.description


def _check_d(
    verdicts: _Verdicts,
    model: nn.Module,
    batches: Batches,
    large_eps: float | None,
    max_acc: float,
    pgd_steps: int,
    pgd_restarts: int,
    seed: int,
    common: Mapping[str, Any],
) -> float | None:
    """Phase 5, check (d) PGD at ``large_eps`` (run only if it covers the ``[0, 1]`` box; PGD's default step there).

    Returns:
        PGD's accuracy at ``large_eps`` (fraction), or ``None`` when skipped.
    """
    if large_eps is None:
        verdicts.skipped["large_eps"] = "large_eps=None"
        return None
    if check_eps_value("large_eps", large_eps) < 1.0:
        verdicts.skipped["large_eps"] = (
            f"large_eps={large_eps:g} does not cover the input box [0, 1] (needs >= 1), so accuracy need not reach 0"
        )
        return None
    large_acc = pgd_accuracy(model, batches, large_eps, steps=pgd_steps, restarts=pgd_restarts, seed=seed, **common)
    verdicts.run.append("large_eps")
    verdicts.warnings += check_large_eps(large_acc, large_eps, max_acc)
    return large_acc


def gradient_masking_checks(
    model: nn.Module,
    batches: Batches,
    eps: float,
    *,
    fgsm_sweep: Mapping[float, float] | None = None,
    pgd_acc: float | None = None,
    **kwargs: Any,
) -> list[str]:
    """Gradient-masking warnings for ``model`` at Linf radius ``eps`` (empty list when none fired).

    Shorthand for ``run_masking_checks(...).warnings``; see :func:`run_masking_checks` for the
    checks and the keyword arguments (``tol``, ``square_queries``, ``large_eps``, ...).
    """
    return run_masking_checks(model, batches, eps, fgsm_sweep=fgsm_sweep, pgd_acc=pgd_acc, **kwargs).warnings
