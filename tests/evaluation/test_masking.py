"""Gradient-masking checks: silent on a normally trained model, loud on a quantized-input model.

The masked model is the moons MLP behind ``round(4x)/4``: its input gradient is exactly zero,
so FGSM returns the clean input (FGSM accuracy = clean accuracy at every eps, R&G = 6 x clean)
and PGD only moves by its random start, while Square Attack, which only queries the logits,
breaks many more samples. Settings are seeded and chosen with a wide margin; measured at
eps 0.2 with 300 Square queries: normal model FGSM = PGD = 53%, Square 71%, PGD at eps 1 0%;
masked model FGSM 87.5% at every eps, PGD 82%, Square 65.5% (21% of the samples are broken by
Square only), PGD at eps 1 64.5%.
"""

from __future__ import annotations

import pytest

from lsa_train.evaluation import (
    check_blackbox_vs_whitebox,
    check_fgsm_monotone,
    check_large_eps,
    check_pgd_vs_fgsm,
    fgsm_sweep,
    gradient_masking_checks,
    rg_score,
    run_masking_checks,
    square_vs_pgd,
)
from lsa_train.evaluation.masking import PREFIX

EPS = 0.2
FAST = {"square_queries": 300, "square_max_samples": 200, "seed": 0}


# -- the checks on numbers --------------------------------------------------------------------
def test_check_pgd_vs_fgsm():
    assert check_pgd_vs_fgsm(fgsm_acc=0.50, pgd_acc=0.40, eps=0.1) == []
    assert check_pgd_vs_fgsm(fgsm_acc=0.50, pgd_acc=0.51, eps=0.1, tol=0.02) == []
    (message,) = check_pgd_vs_fgsm(fgsm_acc=0.50, pgd_acc=0.60, eps=0.1, tol=0.02)
    assert message.startswith(PREFIX) and "PGD" in message and "60.00%" in message


def test_check_fgsm_monotone():
    assert check_fgsm_monotone({0.0: 0.9, 0.1: 0.6, 0.2: 0.61, 0.3: 0.2}) == []
    rising = check_fgsm_monotone({0.0: 0.9, 0.1: 0.5, 0.2: 0.7, 0.3: 0.2})
    assert len(rising) == 1 and "rises" in rising[0]
    flat = check_fgsm_monotone({0.0: 0.9, 0.1: 0.9, 0.5: 0.89})
    assert len(flat) == 1 and "largest eps=0.5" in flat[0]
    assert check_fgsm_monotone({0.0: 0.9}) == []
    with pytest.raises(ValueError, match="fraction"):
        check_fgsm_monotone({0.0: 0.9, 0.1: 0.5}, tol=2.0)


def test_check_blackbox_and_large_eps():
    assert check_blackbox_vs_whitebox(blackbox_acc=0.55, whitebox_acc=0.50, eps=0.1) == []
    (message,) = check_blackbox_vs_whitebox(blackbox_acc=0.30, whitebox_acc=0.50, eps=0.1)
    assert message.startswith(PREFIX) and "Square" in message
    assert check_large_eps(0.0, eps=1.0) == []
    (message,) = check_large_eps(0.5, eps=1.0)
    assert message.startswith(PREFIX) and "eps=1" in message


# -- on models --------------------------------------------------------------------------------
def test_no_warning_on_normal_model(moons):
    batches = moons.batches()
    result = run_masking_checks(moons.model, batches, EPS, fgsm_sweep=fgsm_sweep(moons.model, batches), **FAST)
    assert result.warnings == []
    assert result.square is not None and result.square.blackbox >= result.square.whitebox - 0.02
    assert result.large_eps_accuracy == 0.0


def test_warnings_on_masked_model(masked_moons):
    batches = masked_moons.batches()
    sweep = fgsm_sweep(masked_moons.model, batches)
    # Zero gradients: FGSM never moves, so the paper's FGSM-only metric is maximal for this model.
    assert len(set(sweep.values())) == 1
    assert rg_score(sweep) == pytest.approx(600.0 * sweep[0.0])

    result = run_masking_checks(masked_moons.model, batches, EPS, fgsm_sweep=sweep, **FAST)
    assert result.warnings, "the masked model must trigger at least one check"
    assert all(w.startswith(PREFIX) for w in result.warnings)
    text = "\n".join(result.warnings)
    assert "largest eps" in text  # (b) FGSM flat
    assert "Square" in text  # (c) black-box beats white-box
    assert "huge eps" in text  # (d) PGD at eps=1 far from 0
    assert result.square is not None and result.square.blackbox_only > 0.1
    assert gradient_masking_checks(masked_moons.model, batches, EPS, fgsm_sweep=sweep, **FAST) == result.warnings


def test_checks_compute_missing_inputs(moons, masked_moons):
    assert gradient_masking_checks(moons.model, moons.batches(), EPS, square_queries=None) == []
    warnings = gradient_masking_checks(masked_moons.model, masked_moons.batches(), EPS, square_queries=None)
    assert any("huge eps" in w for w in warnings)


def test_square_backends_agree_on_masked_model(masked_moons):
    pytest.importorskip("pyautoattack", reason="the pyautoattack Square backend needs pyautoattack")
    batches = masked_moons.batches()
    ta = square_vs_pgd(masked_moons.model, batches, EPS, n_queries=300, backend="torchattacks")
    aa = square_vs_pgd(masked_moons.model, batches, EPS, n_queries=300, backend="pyautoattack")
    assert ta.whitebox == aa.whitebox  # same seeded PGD
    for result in (ta, aa):
        assert result.blackbox < result.whitebox - 0.1
    # torchattacks' Square is a port of the reference code; with the same seed the results
    # were identical when measured, the tolerance only allows for future numerical drift.
    assert abs(ta.blackbox - aa.blackbox) <= 0.03


def test_masking_checks_need_reiterable_data(moons):
    with pytest.raises(ValueError, match="one-shot"):
        run_masking_checks(moons.model, iter(moons.batches()), EPS)


def test_square_vs_pgd_restores_model_mode(moons):
    model = moons.model
    model.train()
    try:
        square_vs_pgd(model, moons.batches(), EPS, n_queries=50, max_samples=50)
        assert all(m.training for m in model.modules())
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        model.eval()


# -- preconditions: a check that cannot hold is skipped with its reason ----------------------
def test_fgsm_drop_needs_a_large_radius():
    # a robust model that loses under 2 points at eps=0.1 is not masking gradients
    robust = {0.0: 0.90, 0.05: 0.895, 0.1: 0.89}
    assert check_fgsm_monotone(robust) == []
    (message,) = check_fgsm_monotone(robust, drop_min_eps=0.1)
    assert "largest eps=0.1" in message
    assert check_fgsm_monotone({0.0: 0.01, 0.5: 0.01}) == []  # nothing to lose


def test_default_sweep_does_not_flag_a_small_eps(moons):
    # the library's default sweep (0, eps/2, eps) at an eps too small to cost the model 2 points
    result = run_masking_checks(moons.model, moons.batches(), 0.002, square_queries=None)
    assert result.fgsm_sweep[0.0] - result.fgsm_sweep[0.002] < 0.02
    assert result.warnings == []
    assert "fgsm_drop" in result.checks_skipped and "below 0.5" in result.checks_skipped["fgsm_drop"]
    assert result.checks_skipped["blackbox_vs_whitebox"].startswith("no Square budget")
    assert {"pgd_vs_fgsm", "fgsm_rises", "large_eps"} <= set(result.checks_run)


def test_pgd_that_cannot_reach_the_radius_is_not_compared(moons):
    batches = moons.batches()
    sweep = fgsm_sweep(moons.model, batches)
    result = run_masking_checks(
        moons.model, batches, EPS, fgsm_sweep=sweep, pgd_steps=2, pgd_alpha=0.01, square_queries=None, large_eps=0.8
    )
    assert "travel at most 0.02 < eps=0.2" in result.checks_skipped["pgd_vs_fgsm"]
    assert "does not cover the input box" in result.checks_skipped["large_eps"] and result.large_eps_accuracy is None
    assert set(result.checks_run) == {"fgsm_rises", "fgsm_drop"}


def test_two_step_pgd_with_the_default_step_raises_no_alarm(moons):
    # with a fixed eps / 4 step, PGD-2 stopped at eps / 2 and looked weaker than FGSM
    batches = moons.batches()
    result = run_masking_checks(moons.model, batches, EPS, pgd_steps=2, square_queries=None)
    assert "pgd_vs_fgsm" in result.checks_run
    assert result.warnings == []
    assert result.pgd_accuracy <= result.fgsm_sweep[EPS] + 0.02
