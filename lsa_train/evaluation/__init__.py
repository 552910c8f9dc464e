"""Robustness evaluation: clean / FGSM / PGD / AutoAttack accuracies, the LSA paper's R&G score,
gradient-masking checks and reports (Markdown, JSON, CSV, accuracy-vs-eps plot).

Plain PyTorch: evaluators take a model and a ``DataLoader`` (or any iterable of ``(x, y)``
batches, inputs in ``[0, 1]``), stream it batch by batch and return accuracies as fractions.

Example:
    >>> from lsa_train.evaluation import fgsm_sweep, rg_score, pgd_accuracy, gradient_masking_checks
    >>> sweep = fgsm_sweep(model, test_loader)                 # {0.0: 0.988, 0.1: 0.821, ...}
    >>> rg_score(sweep)                                        # 257.2 (percent, summed over the grid)
    >>> pgd = pgd_accuracy(model, test_loader, eps=0.3, steps=40)
    >>> gradient_masking_checks(model, test_loader, 0.3, fgsm_sweep=sweep, pgd_acc=pgd)  # [] if no symptom
    >>> report = evaluate_robustness(model, test_loader, eps=0.3, autoattack_version="standard")
    >>> report.write_all("outputs/eval")                       # report.md, metrics.json/csv, PNG
    >>> attacks = adaptive_attacks(0.3, probes=mvl_probes, transfer_source=base_model)  # know the defense
    >>> report = evaluate_robustness(model, test_loader, eps=0.3, extra_attacks=attacks)
    >>> report.worst_case_accuracy                             # correct clean and under every attack
"""

from lsa_train.evaluation.adaptive import DEFAULT_KAPPAS, FeaturePGD, NamedAttack, TransferAttack, adaptive_attacks
from lsa_train.evaluation.autoattack import (
    AUTOATTACK_ATTACKS,
    AUTOATTACK_VERSIONS,
    autoattack_accuracy,
    autoattack_sample_count,
)
from lsa_train.evaluation.evaluate import evaluate_robustness
from lsa_train.evaluation.masking import (
    MaskingCheckResult,
    PairedAccuracy,
    check_blackbox_vs_whitebox,
    check_fgsm_monotone,
    check_large_eps,
    check_pgd_vs_fgsm,
    gradient_masking_checks,
    run_masking_checks,
    square_vs_pgd,
)
from lsa_train.evaluation.plotting import plot_accuracy_vs_eps
from lsa_train.evaluation.report import REPORT_FILES, EvaluationReport
from lsa_train.evaluation.robustness import (
    EPS_MULTIPLES,
    PAPER_EPS_GRID,
    attack_accuracy,
    clean_accuracy,
    clean_counts,
    correct_mask,
    eps_multiples_grid,
    fgsm_sweep,
    pgd_accuracy,
    rg_score,
)
from lsa_train.evaluation.seeding import attack_seed
from lsa_train.evaluation.utils import collect_samples, eval_mode
from lsa_train.evaluation.worst_case import AttackOutcome, WorstCase, worst_case

__all__ = [
    "AUTOATTACK_ATTACKS",
    "AUTOATTACK_VERSIONS",
    "DEFAULT_KAPPAS",
    "EPS_MULTIPLES",
    "PAPER_EPS_GRID",
    "REPORT_FILES",
    "AttackOutcome",
    "EvaluationReport",
    "FeaturePGD",
    "MaskingCheckResult",
    "NamedAttack",
    "PairedAccuracy",
    "TransferAttack",
    "WorstCase",
    "adaptive_attacks",
    "attack_accuracy",
    "attack_seed",
    "autoattack_accuracy",
    "autoattack_sample_count",
    "check_blackbox_vs_whitebox",
    "check_fgsm_monotone",
    "check_large_eps",
    "check_pgd_vs_fgsm",
    "clean_accuracy",
    "clean_counts",
    "collect_samples",
    "correct_mask",
    "eps_multiples_grid",
    "eval_mode",
    "evaluate_robustness",
    "fgsm_sweep",
    "gradient_masking_checks",
    "pgd_accuracy",
    "plot_accuracy_vs_eps",
    "rg_score",
    "run_masking_checks",
    "square_vs_pgd",
    "worst_case",
]
