"""One call that runs the whole evaluation protocol and returns an :class:`EvaluationReport`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsa_train.evaluation.adaptive import NamedAttack
from lsa_train.evaluation.autoattack import autoattack_accuracy, autoattack_sample_count
from lsa_train.evaluation.masking import CHECKS, run_masking_checks
from lsa_train.evaluation.report import EvaluationReport
from lsa_train.evaluation.robustness import correct_mask, eps_multiples_grid, fgsm_sweep, pgd_attack
from lsa_train.evaluation.seeding import attack_seed
from lsa_train.evaluation.utils import (
    Batches,
    check_max_samples,
    collect_samples,
    require_reiterable,
    resolve_device,
)
from lsa_train.evaluation.worst_case import AttackOutcome, WorstCase, worst_case
from lsa_train.utils.subsets import batch_labels, describe_subset, select_stratified


def evaluate_robustness(
    model: nn.Module,
    batches: Batches,
    eps: float,
    *,
    eps_grid: Iterable[float] | None = None,
    pgd_steps: int = 20,
    pgd_alpha: float | None = None,
    pgd_restarts: int = 1,
    autoattack_version: str | None = None,
    autoattack_attacks: list[str] | None = None,
    autoattack_samples: int | str | None = 1000,
    extra_attacks: Sequence[NamedAttack] = (),
    skipped_attacks: Mapping[str, str] | None = None,
    masking_checks: bool = True,
    masking_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Clean accuracy, FGSM sweep + R&G score, Linf PGD, optional AutoAttack, further attacks, the
    worst case per sample over every attack, and the masking checks.

    The worst case (:func:`~lsa_train.evaluation.worst_case.worst_case`) counts a sample as robust only
    if it is correct clean and under PGD, the masking checks' Square (black-box), AutoAttack and every
    ``extra_attacks`` entry; it is computed on the samples every attack ran on (AutoAttack and Square may
    run on fewer), and the report says how many and which attacks it covers.

    PGD runs with ``seed``; every other attack with its own seed derived from ``seed`` and its name
    (:func:`~lsa_train.evaluation.seeding.attack_seed`), so no two share their random starts.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``, inputs in ``[0, 1]``.
        batches: Re-iterable data: a ``DataLoader`` or a list of ``(x, y)`` batches.
        eps: Linf radius of PGD, AutoAttack and the masking checks (input units).
        eps_grid: FGSM grid; include ``0`` for the R&G score. Default: ``0, 1, ..., 5 x eps``
            (:func:`~lsa_train.evaluation.robustness.eps_multiples_grid`; the paper's grid for eps 0.1), so
            the sweep, its R&G score and the masking checks follow the budget the model is evaluated at.
        pgd_steps: PGD steps. Default: ``20``.
        pgd_alpha: PGD step size; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``.
        pgd_restarts: PGD restarts. Default: ``1``.
        autoattack_version: ``None`` skips AutoAttack; else ``"standard"``, ``"plus"``, ``"rand"``
            or ``"custom"`` (with ``autoattack_attacks``).
        autoattack_attacks: Attacks for ``autoattack_version="custom"``.
        autoattack_samples: AutoAttack runs on a seeded stratified subset of this many of the evaluated
            samples (it needs them in memory at once; :func:`~lsa_train.utils.subsets.stratified_subset`
            with ``seed``); ``None`` for all; ``"auto"``: all when at most
            :data:`~lsa_train.evaluation.autoattack.AUTO_ALL_UP_TO` samples are evaluated, else
            :data:`~lsa_train.evaluation.autoattack.AUTO_FALLBACK`. Default: ``1000``.
        extra_attacks: Further attacks (e.g. :func:`~lsa_train.evaluation.adaptive.adaptive_attacks`),
            each run on every evaluated sample and joining the worst case.
        skipped_attacks: ``{attack: why it did not run}``, stated in the report.
        masking_checks: Run :func:`~lsa_train.evaluation.masking.run_masking_checks`. Default: ``True``.
        masking_kwargs: Extra keyword arguments for the masking checks (``tol``, ``square_queries``, ...).
        seed: The evaluation seed: PGD's, and the one the other attacks' seeds derive from. Default: ``0``.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate a seeded stratified subset of ``max_samples`` samples (same class proportions
            as the data, fixed by ``seed``; one label pass over the data picks it); ``None`` for all. Every
            attack runs on this subset, and the subsets of AutoAttack and the Square check are drawn from
            it with the same seed, so they are nested and per-sample results line up. The report's
            ``metadata["samples"]`` says ``"N of M samples, stratified, seed S"``.
        model_name: Stored in the report.
        checkpoint: Stored in the report.
        metadata: Free-form extra information stored in the report.

    Returns:
        The :class:`EvaluationReport` (write it with :meth:`EvaluationReport.write_all`).
    """
    require_reiterable(batches, "evaluate_robustness")
    device = resolve_device(model, device)
    max_samples = check_max_samples(max_samples)
    common: dict[str, Any] = {"device": device, "max_samples": None}
    samples = _clean_pass(model, *_choose_samples(batches, max_samples, seed), seed, common)
    sweep = fgsm_sweep(model, samples.batches, eps_multiples_grid(eps) if eps_grid is None else eps_grid, **common)
    tally = _Tally()
    pgd, pgd_settings = _run_pgd(model, samples, eps, pgd_steps, pgd_alpha, pgd_restarts, seed, common, tally)
    masking: dict[str, Any] | None = None
    masking_settings: dict[str, Any] = {}
    if masking_checks:
        masking, masking_settings = _run_masking_checks(
            model, samples, eps, sweep=sweep, pgd=pgd, pgd_steps=pgd_steps, pgd_alpha=pgd_alpha,
            pgd_restarts=pgd_restarts, seed=seed, common=common, masking_kwargs=masking_kwargs, tally=tally,
        )
    aa_acc: float | None = None
    aa_settings: dict[str, Any] = {}
    if autoattack_version is not None:
        aa_acc, aa_settings = _run_autoattack(
            model, samples, eps, autoattack_version, autoattack_attacks, autoattack_samples, seed, device, tally
        )
    _run_extra_attacks(model, samples, extra_attacks, common, tally)
    case, attacks = _worst_case(samples, tally)
    return EvaluationReport(
        clean_accuracy=samples.clean_accuracy,
        fgsm_sweep=sweep,
        pgd_accuracy=pgd,
        pgd_settings=pgd_settings,
        autoattack_accuracy=aa_acc,
        autoattack_settings=aa_settings,
        warnings=tally.warnings,
        model_name=model_name,
        checkpoint=None if checkpoint is None else str(checkpoint),
        n_samples=samples.n,
        other_metrics=tally.other,
        metadata=_metadata(metadata, samples, masking_settings),
        masking=masking,
        worst_case_accuracy=case.accuracy,
        attacks=attacks,
        worst_case=case.to_dict(),
        skipped_attacks=dict(skipped_attacks or {}),
    )


# -- the phases of evaluate_robustness, in the order it runs them ---------------------------------------------
@dataclass(frozen=True)
class _Samples:
    """The evaluated samples and their clean pass, shared by every attack phase.

    Attributes:
        batches: The data every attack runs on: all of it, or the stratified ``max_samples`` subset.
        labels: ``(n,)`` int64 on the CPU, in stream order (every later pass is checked against it).
        clean_correct: ``(n,)`` bool on the CPU: classified correctly without attack.
        description: ``"N of M samples, stratified, seed S"`` or ``"all M samples"``, for the report.
    """

    batches: Batches
    labels: torch.Tensor
    clean_correct: torch.Tensor
    description: str

    @property
    def n(self) -> int:
        """How many samples are evaluated."""
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        """Clean accuracy, a fraction in ``[0, 1]``."""
        return int(self.clean_correct.sum()) / self.n


@dataclass
class _Tally:
    """What the attack phases found, in the order they ran (the report lists the attacks in that order).

    Attributes:
        outcomes: Per-sample results of the attacks that join the worst case.
        seconds: ``{outcome name: wall-clock seconds}``.
        warnings: The report's warnings (masking checks, then AutoAttack's).
        other: The report's ``other_metrics`` (Square vs PGD, PGD at the huge eps), fractions in ``[0, 1]``.
    """

    outcomes: list[AttackOutcome] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    other: dict[str, float] = field(default_factory=dict)

    def add(self, outcome: AttackOutcome, seconds: float) -> None:
        """Records one attack's per-sample outcome and its time (seconds)."""
        self.outcomes.append(outcome)
        self.seconds[outcome.name] = seconds


def _choose_samples(batches: Batches, max_samples: int | None, seed: int) -> tuple[Batches, str | None]:
    """Phase 1: the seeded stratified subset of ``max_samples`` samples (one label pass over the data).

    Returns:
        The batches to evaluate (``batches`` itself when nothing is left out) and the subset's description
        (``None`` when ``max_samples`` is ``None``).
    """
    if max_samples is None:
        return batches, None
    selection = select_stratified(batches, batch_labels(batches), max_samples, seed)
    return selection.batches, selection.description


def _clean_pass(
    model: nn.Module, batches: Batches, subset: str | None, seed: int, common: Mapping[str, Any]
) -> _Samples:
    """Phase 2: which of the chosen samples ``model`` classifies correctly, and their labels."""
    clean_correct, labels = correct_mask(model, batches, **common)
    n = int(clean_correct.numel())
    return _Samples(batches, labels, clean_correct, subset if subset is not None else describe_subset(n, n, seed))


def _run_pgd(
    model: nn.Module,
    samples: _Samples,
    eps: float,
    steps: int,
    alpha: float | None,
    restarts: int,
    seed: int,
    common: Mapping[str, Any],
    tally: _Tally,
) -> tuple[float, dict[str, Any]]:
    """Phase 3: Linf PGD at ``eps`` (input units) with the evaluation seed itself, on every sample.

    Returns:
        PGD's accuracy (fraction in ``[0, 1]``) and its settings for the report; its outcome goes to ``tally``.
    """
    settings = {"eps": float(eps), "alpha": alpha, "steps": steps, "restarts": restarts, "norm": "linf", "seed": seed}
    started = time.perf_counter()
    mask = _run_attack(model, samples.batches, pgd_attack(eps, alpha, steps, restarts, seed=seed), samples.labels,
                       "PGD", common)
    accuracy = int(mask.sum()) / samples.n
    tally.add(AttackOutcome("pgd", mask, torch.arange(samples.n), settings), time.perf_counter() - started)
    return accuracy, settings


def _run_masking_checks(
    model: nn.Module,
    samples: _Samples,
    eps: float,
    *,
    sweep: Mapping[float, float],
    pgd: float,
    pgd_steps: int,
    pgd_alpha: float | None,
    pgd_restarts: int,
    seed: int,
    common: Mapping[str, Any],
    masking_kwargs: Mapping[str, Any] | None,
    tally: _Tally,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phase 4: the gradient-masking checks, reusing the FGSM sweep and the PGD accuracy (fraction).

    Square's subset is drawn with ``seed`` (nested with AutoAttack's), its search seeded with its own seed;
    its per-sample outcome, mapped to positions in the evaluated stream, joins the worst case through ``tally``,
    with the warnings and the Square / huge-eps accuracies.

    Returns:
        The report's ``masking`` (checks run / skipped, by their names) and the checks' settings.
    """
    options: dict[str, Any] = {
        "labels": samples.labels,
        "pgd_steps": pgd_steps,
        "pgd_alpha": pgd_alpha,
        "pgd_restarts": pgd_restarts,
        "seed": seed,
        "square_seed": attack_seed(seed, "square"),
        **common,
        **dict(masking_kwargs or {}),
    }
    result = run_masking_checks(model, samples.batches, eps, fgsm_sweep=sweep, pgd_acc=pgd, **options)
    tally.warnings += result.warnings
    masking = {
        "run": [CHECKS[key] for key in result.checks_run],
        "skipped": {CHECKS[key]: reason for key, reason in result.checks_skipped.items()},
    }
    square = result.square
    if square is not None:
        tally.other["square_accuracy"] = square.blackbox
        tally.other["pgd_accuracy_on_square_samples"] = square.whitebox
        if square.blackbox_correct is not None and square.indices is not None:
            outcome = AttackOutcome("square", square.blackbox_correct, square.indices,
                                    _square_settings(result.settings))
            tally.add(outcome, square.blackbox_seconds)
    if result.large_eps_accuracy is not None:
        tally.other[f"pgd_accuracy_eps_{result.settings['large_eps']:g}"] = result.large_eps_accuracy
    return masking, result.settings


def _run_autoattack(
    model: nn.Module,
    samples: _Samples,
    eps: float,
    version: str,
    attacks: list[str] | None,
    n_samples_setting: int | str | None,
    seed: int,
    device: torch.device,
    tally: _Tally,
) -> tuple[float, dict[str, Any]]:
    """Phase 5: AutoAttack at Linf ``eps`` on a stratified subset of the evaluated samples, held in memory.

    The subset is drawn with ``seed``, so it is nested with the Square check's; the attacks are seeded with
    AutoAttack's own seed. Its per-sample outcome (with the samples each component broke first) and its
    warnings go to ``tally``.

    Returns:
        AutoAttack's robust accuracy (fraction in ``[0, 1]``) and its settings for the report.
    """
    limit = autoattack_sample_count(n_samples_setting, samples.n)
    selection = select_stratified(samples.batches, samples.labels, limit, seed)
    positions = selection.positions
    x, y = collect_samples(selection.batches)
    if not torch.equal(y, samples.labels[positions]):
        raise ValueError(_ORDER_MESSAGE.format(what="AutoAttack"))
    settings = autoattack_accuracy(
        model, x, y, eps, "Linf", version, attacks=attacks, seed=attack_seed(seed, "autoattack"), device=device,
    )
    seconds = settings["seconds"]
    accuracy = settings.pop("robust_accuracy")
    mask, broken_by = settings.pop("robust_mask"), settings.pop("broken_by")
    settings["n_samples_setting"] = n_samples_setting
    settings["subset"] = selection.description
    tally.add(AttackOutcome("autoattack", mask, positions, _outcome_settings(settings), accuracy=accuracy,
                            broken_by=broken_by), seconds)
    tally.warnings += [f"AutoAttack: {message}" for message in settings.get("warnings", [])]
    return accuracy, settings


def _run_extra_attacks(
    model: nn.Module, samples: _Samples, extra_attacks: Sequence[NamedAttack], common: Mapping[str, Any], tally: _Tally
) -> None:
    """Phase 6: each further attack on every evaluated sample; its outcome and time go to ``tally``."""
    for named in extra_attacks:
        if named.name in {o.name for o in tally.outcomes}:
            raise ValueError(f"attack name {named.name!r} is taken; give the extra attacks other names")
        started = time.perf_counter()
        mask = _run_attack(model, samples.batches, named.attack, samples.labels, named.name, common)
        tally.add(AttackOutcome(named.name, mask, torch.arange(samples.n), dict(named.settings)),
                  time.perf_counter() - started)


def _worst_case(samples: _Samples, tally: _Tally) -> tuple[WorstCase, dict[str, dict[str, Any]]]:
    """Phase 7: the worst case per sample over the clean pass and every attack.

    Returns:
        The :class:`~lsa_train.evaluation.worst_case.WorstCase` and the report's ``attacks`` table
        (``{name: accuracy, n_samples, accuracy_on_common, settings, seconds}``, accuracies as fractions).
    """
    # Square picks its own samples (masking.square_max_samples): left out, and said so, if they share none
    case = worst_case(samples.clean_correct, tally.outcomes, optional={"square"})
    attacks = {
        o.name: {"accuracy": o.own_accuracy, "n_samples": o.n_samples,
                 "accuracy_on_common": case.accuracy_on_common.get(o.name), "settings": dict(o.settings),
                 "seconds": round(tally.seconds[o.name], 2)}
        for o in tally.outcomes
    }
    return case, attacks


def _metadata(
    metadata: Mapping[str, Any] | None, samples: _Samples, masking_settings: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Phase 8 (the report's ``metadata``): the caller's, plus which samples and the masking checks' settings."""
    info = dict(metadata or {})
    info["samples"] = samples.description
    if masking_settings:
        info["masking_checks"] = masking_settings
    return info


_ORDER_MESSAGE = (
    "the data came in another order for {what} than for the clean pass; the worst case per sample needs the "
    "same order on every pass (a test/val loader without shuffling)"
)


def _run_attack(
    model: nn.Module, batches: Batches, attack: Any, labels: torch.Tensor, name: str, common: Mapping[str, Any]
) -> torch.Tensor:
    """``(n,)`` bool: the attack's adversarial inputs classified correctly, in the clean pass's order."""
    mask, seen = correct_mask(model, batches, attack, **common)
    if not torch.equal(seen, labels):
        raise ValueError(_ORDER_MESSAGE.format(what=name))
    return mask


def _square_settings(masking_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The Square parameters of the masking checks, listed beside its number in the worst case."""
    return {"eps": masking_settings["eps"], "norm": "linf", "loss": "margin (black-box, score-based)",
            "n_queries": masking_settings["square_queries"], "seed": masking_settings["square_seed"],
            "n_samples_setting": masking_settings["square_max_samples"], "from": "masking check (c)"}


def _outcome_settings(aa_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The AutoAttack parameters worth listing beside its number."""
    keys = ("eps", "norm", "version", "attacks", "seed", "n_samples_setting", "subset")
    return {key: aa_settings[key] for key in keys if key in aa_settings}
