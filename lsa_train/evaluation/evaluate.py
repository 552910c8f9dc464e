"""One call that runs the whole evaluation protocol and returns an :class:`EvaluationReport`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
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
from lsa_train.evaluation.worst_case import AttackOutcome, worst_case
from lsa_train.utils.subsets import SelectedBatches, batch_labels, describe_subset, stratified_subset


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
    subset = None
    if max_samples is not None:
        everything = batch_labels(batches)
        chosen = stratified_subset(everything, max_samples, seed)
        subset = describe_subset(int(chosen.numel()), int(everything.numel()), seed)
        if chosen.numel() < everything.numel():
            batches = SelectedBatches(batches, chosen)
    common: dict[str, Any] = {"device": device, "max_samples": None}
    clean_mask, labels = correct_mask(model, batches, **common)
    n_samples = int(clean_mask.numel())
    clean = int(clean_mask.sum()) / n_samples
    sweep = fgsm_sweep(model, batches, eps_multiples_grid(eps) if eps_grid is None else eps_grid, **common)
    pgd_settings = {
        "eps": float(eps),
        "alpha": pgd_alpha,
        "steps": pgd_steps,
        "restarts": pgd_restarts,
        "norm": "linf",
        "seed": seed,
    }
    all_samples = torch.arange(n_samples)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    pgd_mask = _run_attack(model, batches, pgd_attack(eps, pgd_alpha, pgd_steps, pgd_restarts, seed=seed),
                           labels, "PGD", common)
    pgd = int(pgd_mask.sum()) / n_samples
    seconds["pgd"] = time.perf_counter() - started
    outcomes = [AttackOutcome("pgd", pgd_mask, all_samples, pgd_settings)]

    warnings: list[str] = []
    other: dict[str, float] = {}
    masking_settings: dict[str, Any] = {}
    masking: dict[str, Any] | None = None
    if masking_checks:
        options: dict[str, Any] = {
            "labels": labels,
            "pgd_steps": pgd_steps,
            "pgd_alpha": pgd_alpha,
            "pgd_restarts": pgd_restarts,
            "seed": seed,
            "square_seed": attack_seed(seed, "square"),
            **common,
            **dict(masking_kwargs or {}),
        }
        result = run_masking_checks(model, batches, eps, fgsm_sweep=sweep, pgd_acc=pgd, **options)
        warnings += result.warnings
        masking_settings = result.settings
        masking = {
            "run": [CHECKS[key] for key in result.checks_run],
            "skipped": {CHECKS[key]: reason for key, reason in result.checks_skipped.items()},
        }
        if result.square is not None:
            other["square_accuracy"] = result.square.blackbox
            other["pgd_accuracy_on_square_samples"] = result.square.whitebox
            square = result.square
            if square.blackbox_correct is not None and square.indices is not None:
                outcomes.append(AttackOutcome("square", square.blackbox_correct, square.indices,
                                              _square_settings(result.settings)))
                seconds["square"] = square.blackbox_seconds
        if result.large_eps_accuracy is not None:
            other[f"pgd_accuracy_eps_{result.settings['large_eps']:g}"] = result.large_eps_accuracy

    aa_acc: float | None = None
    aa_settings: dict[str, Any] = {}
    if autoattack_version is not None:
        limit = autoattack_sample_count(autoattack_samples, n_samples)
        # a stratified subset of the evaluated samples, nested with the Square check's (same seed)
        positions = stratified_subset(labels, limit, seed)
        x, y = collect_samples(SelectedBatches(batches, positions) if limit < n_samples else batches)
        if not torch.equal(y, labels[positions]):
            raise ValueError(_ORDER_MESSAGE.format(what="AutoAttack"))
        aa_settings = autoattack_accuracy(
            model, x, y, eps, "Linf", autoattack_version, attacks=autoattack_attacks,
            seed=attack_seed(seed, "autoattack"), device=device,
        )
        seconds["autoattack"] = aa_settings["seconds"]
        aa_acc = aa_settings.pop("robust_accuracy")
        aa_mask, broken_by = aa_settings.pop("robust_mask"), aa_settings.pop("broken_by")
        aa_settings["n_samples_setting"] = autoattack_samples
        aa_settings["subset"] = describe_subset(limit, n_samples, seed)
        outcomes.append(AttackOutcome("autoattack", aa_mask, positions,
                                      _outcome_settings(aa_settings), accuracy=aa_acc, broken_by=broken_by))
        warnings += [f"AutoAttack: {message}" for message in aa_settings.get("warnings", [])]

    for named in extra_attacks:
        if named.name in {o.name for o in outcomes}:
            raise ValueError(f"attack name {named.name!r} is taken; give the extra attacks other names")
        started = time.perf_counter()
        mask = _run_attack(model, batches, named.attack, labels, named.name, common)
        seconds[named.name] = time.perf_counter() - started
        outcomes.append(AttackOutcome(named.name, mask, all_samples, dict(named.settings)))

    # Square picks its own samples (masking.square_max_samples): left out, and said so, if they share none
    case = worst_case(clean_mask, outcomes, optional={"square"})
    attacks = {
        o.name: {"accuracy": o.own_accuracy, "n_samples": o.n_samples,
                 "accuracy_on_common": case.accuracy_on_common.get(o.name), "settings": dict(o.settings),
                 "seconds": round(seconds[o.name], 2)}
        for o in outcomes
    }
    info = dict(metadata or {})
    info["samples"] = subset if subset is not None else describe_subset(n_samples, n_samples, seed)
    if masking_settings:
        info["masking_checks"] = masking_settings
    return EvaluationReport(
        clean_accuracy=clean,
        fgsm_sweep=sweep,
        pgd_accuracy=pgd,
        pgd_settings=pgd_settings,
        autoattack_accuracy=aa_acc,
        autoattack_settings=aa_settings,
        warnings=warnings,
        model_name=model_name,
        checkpoint=None if checkpoint is None else str(checkpoint),
        n_samples=n_samples,
        other_metrics=other,
        metadata=info,
        masking=masking,
        worst_case_accuracy=case.accuracy,
        attacks=attacks,
        worst_case=case.to_dict(),
        skipped_attacks=dict(skipped_attacks or {}),
    )


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
