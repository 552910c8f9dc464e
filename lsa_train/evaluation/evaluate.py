"""One call that runs the whole evaluation protocol and returns an :class:`EvaluationReport`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsa_train.evaluation.autoattack import autoattack_accuracy
from lsa_train.evaluation.masking import CHECKS, run_masking_checks
from lsa_train.evaluation.report import EvaluationReport
from lsa_train.evaluation.robustness import PAPER_EPS_GRID, clean_counts, fgsm_sweep, pgd_accuracy
from lsa_train.evaluation.utils import Batches, collect_samples, require_reiterable, resolve_device


def evaluate_robustness(
    model: nn.Module,
    batches: Batches,
    eps: float,
    *,
    eps_grid: Iterable[float] = PAPER_EPS_GRID,
    pgd_steps: int = 20,
    pgd_alpha: float | None = None,
    pgd_restarts: int = 1,
    autoattack_version: str | None = None,
    autoattack_attacks: list[str] | None = None,
    autoattack_samples: int | None = 1000,
    masking_checks: bool = True,
    masking_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    model_name: str | None = None,
    checkpoint: str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Clean accuracy, FGSM sweep + R&G score, Linf PGD, optional AutoAttack and masking checks.

    Args:
        model: Classifier mapping ``x`` ``(B, ...)`` to logits ``(B, K)``, inputs in ``[0, 1]``.
        batches: Re-iterable data: a ``DataLoader`` or a list of ``(x, y)`` batches.
        eps: Linf radius of PGD, AutoAttack and the masking checks (input units).
        eps_grid: FGSM grid; include ``0`` for the R&G score. Default: the paper's grid.
        pgd_steps: PGD steps. Default: ``20``.
        pgd_alpha: PGD step size; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``.
        pgd_restarts: PGD restarts. Default: ``1``.
        autoattack_version: ``None`` skips AutoAttack; else ``"standard"``, ``"plus"``, ``"rand"``
            or ``"custom"`` (with ``autoattack_attacks``).
        autoattack_attacks: Attacks for ``autoattack_version="custom"``.
        autoattack_samples: AutoAttack runs on the first this many samples (it needs them in
            memory at once). Default: ``1000``.
        masking_checks: Run :func:`~lsa_train.evaluation.masking.run_masking_checks`. Default: ``True``.
        masking_kwargs: Extra keyword arguments for the masking checks (``tol``, ``square_queries``, ...).
        seed: Seed of PGD, Square and AutoAttack. Default: ``0``.
        device: Where to evaluate; default: the model's device.
        max_samples: Evaluate only the first ``max_samples`` samples; ``None`` for all.
        model_name: Stored in the report.
        checkpoint: Stored in the report.
        metadata: Free-form extra information stored in the report.

    Returns:
        The :class:`EvaluationReport` (write it with :meth:`EvaluationReport.write_all`).
    """
    require_reiterable(batches, "evaluate_robustness")
    device = resolve_device(model, device)
    common: dict[str, Any] = {"device": device, "max_samples": max_samples}
    correct, n_samples = clean_counts(model, batches, **common)
    if n_samples == 0:
        raise ValueError("the data yielded no samples")
    clean = correct / n_samples
    sweep = fgsm_sweep(model, batches, eps_grid, **common)
    pgd_settings = {
        "eps": float(eps),
        "alpha": pgd_alpha,
        "steps": pgd_steps,
        "restarts": pgd_restarts,
        "norm": "linf",
        "seed": seed,
    }
    pgd = pgd_accuracy(
        model, batches, eps, alpha=pgd_alpha, steps=pgd_steps, restarts=pgd_restarts, seed=seed, **common
    )

    warnings: list[str] = []
    other: dict[str, float] = {}
    masking_settings: dict[str, Any] = {}
    masking: dict[str, Any] | None = None
    if masking_checks:
        options: dict[str, Any] = {
            "pgd_steps": pgd_steps,
            "pgd_alpha": pgd_alpha,
            "pgd_restarts": pgd_restarts,
            "seed": seed,
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
        if result.large_eps_accuracy is not None:
            other[f"pgd_accuracy_eps_{result.settings['large_eps']:g}"] = result.large_eps_accuracy

    aa_acc: float | None = None
    aa_settings: dict[str, Any] = {}
    if autoattack_version is not None:
        limit = autoattack_samples if max_samples is None else min(max_samples, autoattack_samples or max_samples)
        x, y = collect_samples(batches, limit)
        aa_settings = autoattack_accuracy(
            model, x, y, eps, "Linf", autoattack_version, attacks=autoattack_attacks, seed=seed, device=device
        )
        aa_acc = aa_settings.pop("robust_accuracy")
        warnings += [f"AutoAttack: {message}" for message in aa_settings.get("warnings", [])]

    info = dict(metadata or {})
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
    )
