"""The worst case per sample over several attacks: bookkeeping on hand-made masks, and Square inside it."""

from __future__ import annotations

import pytest
import torch

from lsa_train.evaluation import (
    AttackOutcome,
    WorstCase,
    attack_seed,
    autoattack_sample_count,
    evaluate_robustness,
    worst_case,
)
from lsa_train.evaluation.worst_case import describe


def _mask(bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in bits])


def _outcome(name: str, bits: str, start: int = 0, **kwargs) -> AttackOutcome:
    return AttackOutcome(name, _mask(bits), torch.arange(start, start + len(bits)), **kwargs)


CLEAN = _mask("11111110")  # sample 7 is misclassified clean


def test_worst_case_counts_a_sample_only_if_every_attack_failed():
    pgd = _outcome("pgd", "11101101")
    transfer = _outcome("transfer", "01111011")
    case = worst_case(CLEAN, [pgd, transfer])
    # robust: clean and both correct -> samples 1, 2, 4 (sample 7 is lost clean although both attacks "fail")
    assert case.accuracy == pytest.approx(3 / 8)
    assert case.n_samples == case.n_evaluated == 8 and case.same_samples
    assert case.misclassified_clean == 1
    # lost (correct clean, not robust): 0 (transfer), 3 (pgd), 5 (transfer), 6 (pgd)
    assert case.first_broken_by == {"pgd": 2, "transfer": 2}
    assert case.only_broken_by == {"pgd": 2, "transfer": 2}
    assert case.n_lost == 4
    assert case.accuracy_on_common == {"pgd": pytest.approx(5 / 8), "transfer": pytest.approx(5 / 8)}


def test_first_broken_credits_the_earlier_attack_and_only_broken_the_sole_one():
    a = _outcome("a", "00111110")
    b = _outcome("b", "01011110")
    case = worst_case(CLEAN, [a, b])
    # sample 0: both break it (first: a, alone: nobody); 1: a alone; 2: b alone
    assert case.first_broken_by == {"a": 2, "b": 1}
    assert case.only_broken_by == {"a": 1, "b": 1}


def test_worst_case_is_at_most_every_attack_and_equal_to_a_dominating_one():
    generator = torch.Generator().manual_seed(0)
    n = 50
    clean = torch.rand(n, generator=generator) < 0.9
    masks = [torch.rand(n, generator=generator) < p for p in (0.8, 0.6, 0.7)]
    outcomes = [AttackOutcome(f"attack{i}", m, torch.arange(n)) for i, m in enumerate(masks)]
    case = worst_case(clean, outcomes)
    assert case.accuracy <= min(case.accuracy_on_common.values())
    assert case.accuracy < min(case.accuracy_on_common.values())  # these random masks do not nest
    # an attack that breaks a superset of what every other attack breaks dominates: the worst case is its number
    dominating = clean.clone()
    for m in masks:
        dominating &= m
    dominating[: n // 5] = False
    case = worst_case(clean, [*outcomes, AttackOutcome("strong", dominating, torch.arange(n))])
    assert case.accuracy == case.accuracy_on_common["strong"] == min(case.accuracy_on_common.values())
    assert case.first_broken_by["strong"] == int((clean & ~dominating).sum()) - sum(
        v for k, v in case.first_broken_by.items() if k != "strong"
    )


def test_attacks_on_different_samples_use_only_the_common_ones():
    pgd = _outcome("pgd", "11111111")
    autoattack = _outcome("autoattack", "0111", accuracy=0.75)  # ran on the first 4 samples only
    case = worst_case(CLEAN, [pgd, autoattack])
    assert case.n_samples == 4 and case.n_evaluated == 8 and not case.same_samples
    assert case.attack_samples == {"pgd": 8, "autoattack": 4}
    assert case.accuracy == pytest.approx(3 / 4)  # not 7/8 mixed with 3/4
    assert case.accuracy_on_common["pgd"] == 1.0
    text = " ".join(describe(case))
    assert "It covers 2 attacks: pgd, autoattack." in text
    assert "different samples (pgd on 8, autoattack on 4 of 8)" in text
    assert "computed on the 4 samples every attack saw" in text
    shifted = _outcome("late", "1111", start=4)
    with pytest.raises(ValueError, match="no sample was attacked by every attack"):
        worst_case(CLEAN, [autoattack, shifted])


def test_a_sample_broken_only_by_square_on_a_scattered_subset_is_lost():
    # Square ran on samples 1, 3, 4, 6 (any subset the sampling gives); it alone breaks sample 3
    square = AttackOutcome("square", _mask("1011"), torch.tensor([1, 3, 4, 6]))
    pgd = _outcome("pgd", "11111111")
    without = worst_case(CLEAN, [pgd])
    case = worst_case(CLEAN, [pgd, square])
    assert without.accuracy == pytest.approx(7 / 8)
    assert case.n_samples == 4 and case.accuracy == pytest.approx(3 / 4)  # of 1, 3, 4, 6: 3 is lost
    assert case.only_broken_by == {"pgd": 0, "square": 1} and case.first_broken_by["square"] == 1
    assert case.accuracy_on_common == {"pgd": 1.0, "square": 0.75}


def test_square_on_other_samples_than_autoattack_is_counted_where_they_overlap_and_named_where_not():
    pgd, autoattack = _outcome("pgd", "11111111"), _outcome("autoattack", "1111")  # AutoAttack on samples 0-3
    overlapping = AttackOutcome("square", _mask("0011"), torch.tensor([2, 3, 4, 5]))
    case = worst_case(CLEAN, [pgd, autoattack, overlapping], optional={"square"})
    assert case.n_samples == 2 and case.accuracy == 0.0 and case.only_broken_by["square"] == 2  # samples 2, 3
    assert case.excluded == {}
    disjoint = AttackOutcome("square", _mask("0000"), torch.tensor([4, 5, 6, 7]))
    case = worst_case(CLEAN, [pgd, autoattack, disjoint], optional={"square"})
    assert case.attacks == ["pgd", "autoattack"] and case.n_samples == 4 and case.accuracy == 1.0
    assert case.excluded == {"square": "its 4 samples share none with the 4 samples every other attack ran on"}
    assert WorstCase.from_dict(case.to_dict()) == case
    assert "Not in it: square, which ran but its 4 samples share none" in " ".join(describe(case))
    with pytest.raises(ValueError, match="no sample was attacked by every attack"):  # not optional: no answer
        worst_case(CLEAN, [pgd, autoattack, disjoint])


def test_evaluation_puts_square_in_the_worst_case(masked_moons):
    # zero input gradients: PGD stalls, the black-box Square breaks samples that every other attack misses
    batches = masked_moons.batches()
    report = evaluate_robustness(
        masked_moons.model, batches, 0.2, eps_grid=(0.0, 0.2), pgd_steps=10, seed=4,
        masking_kwargs={"square_queries": 300, "square_max_samples": 120, "large_eps": None},
    )
    square, case = report.attacks["square"], report.worst_case
    assert list(report.attacks) == ["pgd", "square"] and case["attacks"] == ["pgd", "square"]
    assert square["n_samples"] == 120 and case["n_samples"] == 120 and case["n_evaluated"] == 200
    assert square["accuracy"] == report.other_metrics["square_accuracy"]
    assert square["settings"]["n_queries"] == 300 and square["settings"]["seed"] == attack_seed(4, "square") != 4
    # measured on the stratified 120 (seed 4): Square alone broke 18, PGD alone 3; worst case 70.0 %, Square
    # 72.5 %, PGD 85.0 %
    assert case["only_broken_by"]["square"] > 10
    # every sample only Square broke counts as lost: the worst case is Square's number less PGD's own breaks
    n_pgd_only = case["only_broken_by"]["pgd"]
    assert report.worst_case_accuracy == pytest.approx(square["accuracy_on_common"] - n_pgd_only / 120)
    assert report.worst_case_accuracy < report.attacks["pgd"]["accuracy_on_common"] - 0.1
    text = report.to_markdown()
    assert "It covers 2 attacks: pgd, square." in text and "| square |" in text


def test_ensemble_components_are_credited_by_name():
    aa = _outcome("autoattack", "00011110", broken_by={"apgd-ce": _mask("10000000"), "square": _mask("01100000")})
    case = worst_case(CLEAN, [_outcome("pgd", "11011111"), aa])
    assert case.first_broken_by == {"pgd": 1, "autoattack/apgd-ce": 1, "autoattack/square": 1}
    assert case.only_broken_by == {"pgd": 0, "autoattack": 2}  # sample 2: both
    # broken by the ensemble but by no listed component: credited to the ensemble itself
    partial = _outcome("autoattack", "00111110", broken_by={"apgd-ce": _mask("10000000")})
    assert worst_case(CLEAN, [partial]).first_broken_by == {"autoattack/apgd-ce": 1, "autoattack": 1}


def test_round_trip_and_bad_input():
    case = worst_case(CLEAN, [_outcome("pgd", "10101010")])
    assert WorstCase.from_dict(case.to_dict()) == case
    assert case.to_dict()["n_lost"] == 3 and case.to_dict()["same_samples"] is True
    with pytest.raises(ValueError, match="unique"):
        worst_case(CLEAN, [_outcome("pgd", "1" * 8), _outcome("pgd", "1" * 8)])
    with pytest.raises(ValueError, match="outside"):
        worst_case(CLEAN, [_outcome("pgd", "11", start=7)])
    with pytest.raises(ValueError, match="same length"):
        AttackOutcome("pgd", _mask("11"), torch.arange(3))


def test_autoattack_sample_count():
    assert autoattack_sample_count("auto", 360) == 360
    assert autoattack_sample_count("auto", 2000) == 2000
    assert autoattack_sample_count("auto", 2001) == 200
    assert autoattack_sample_count(None, 5000) == 5000
    assert autoattack_sample_count(16, 64) == 16 and autoattack_sample_count(100, 64) == 64
    for bad in ("all", 0, 1.5, True):
        with pytest.raises(ValueError, match="n_samples"):
            autoattack_sample_count(bad, 10)
