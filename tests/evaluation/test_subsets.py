"""Seeded stratified subsets (``lsa_train.utils.subsets``) and their use by the evaluation: every attack of
one evaluation sees the same samples, whatever order the split comes in."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import lsa_train.evaluation.evaluate as evaluate_module
import lsa_train.evaluation.masking as masking_module
from lsa_train.evaluation import evaluate_robustness
from lsa_train.evaluation.adaptive import NamedAttack
from lsa_train.utils.subsets import (
    SelectedBatches,
    batch_labels,
    describe_subset,
    stratified_order,
    stratified_subset,
)

#: 3 classes of 50, 30 and 20 samples in class order: "the first N" would be one class only.
CLASS_ORDERED = torch.cat([torch.zeros(50), torch.ones(30), torch.full((20,), 2)]).long()


RANDOM_LABELS = torch.randint(0, 7, (333,), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("labels", [CLASS_ORDERED, RANDOM_LABELS, torch.tensor([0] * 97 + [1] * 2 + [2])])
def test_every_prefix_has_the_class_proportions_within_one_sample(labels: torch.Tensor) -> None:
    order = stratified_order(labels, seed=5)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation
    totals = Counter(labels.tolist())
    for n in range(1, len(labels) + 1):
        got = Counter(labels[order[:n]].tolist())
        for c, size in totals.items():
            assert abs(got[c] - n * size / len(labels)) < 1, (n, c)
        if n in (10, 37, 60):
            assert torch.equal(stratified_subset(labels, n, 5), order[:n].sort().values)


def test_deterministic_per_seed_different_across_seeds_and_nested() -> None:
    a = stratified_subset(CLASS_ORDERED, 30, seed=0)
    assert torch.equal(a, stratified_subset(CLASS_ORDERED, 30, seed=0))
    assert not torch.equal(a, stratified_subset(CLASS_ORDERED, 30, seed=1))
    assert Counter(CLASS_ORDERED[a].tolist()) == {0: 15, 1: 9, 2: 6}
    assert set(stratified_subset(CLASS_ORDERED, 12, seed=0).tolist()) <= set(a.tolist())  # nested
    assert torch.equal(stratified_subset(CLASS_ORDERED, None, seed=0), torch.arange(100))
    assert torch.equal(stratified_subset(CLASS_ORDERED, 500, seed=0), torch.arange(100))
    assert describe_subset(30, 100, 0) == "30 of 100 samples, stratified, seed 0"
    assert describe_subset(100, 100, 0) == "all 100 samples"


def test_selected_batches_stream_the_chosen_samples_in_data_order() -> None:
    x = torch.arange(100, dtype=torch.float32)[:, None]
    batches = [(x[i : i + 16], CLASS_ORDERED[i : i + 16]) for i in range(0, 100, 16)]
    chosen = stratified_subset(CLASS_ORDERED, 25, seed=2)
    picked = SelectedBatches(batches, chosen)
    for _ in range(2):  # re-iterable
        xs = torch.cat([b[0] for b in picked])
        assert torch.equal(xs[:, 0].long(), chosen)
    assert torch.equal(batch_labels(picked), CLASS_ORDERED[chosen])


class Recorder:
    """An attack that returns its inputs unchanged and keeps them: what samples an attack was run on."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x


def test_every_attack_of_one_evaluation_runs_on_the_same_stratified_samples(moons, monkeypatch) -> None:
    """A class-ordered split, max_samples=60: the evaluated samples, AutoAttack's 20 and Square's 40 are
    seeded stratified subsets, nested, and the report says so."""
    order = torch.argsort(moons.y_test, stable=True)
    x_all, y_all = moons.x_test[order], moons.y_test[order]  # class 0 first, then class 1
    batches = [(x_all[i : i + 32], y_all[i : i + 32]) for i in range(0, len(y_all), 32)]
    seen: dict[str, torch.Tensor] = {}
    real_aa, real_square = evaluate_module.autoattack_accuracy, masking_module.square_vs_pgd

    def recording_aa(model, x, y, *args, **kwargs):
        seen["autoattack"] = x.clone()
        return real_aa(model, x, y, *args, **kwargs)

    def recording_square(model, data, *args, **kwargs):
        seen["square"] = torch.cat([b[0] for b in data])
        return real_square(model, data, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "autoattack_accuracy", recording_aa)
    monkeypatch.setattr(masking_module, "square_vs_pgd", recording_square)
    recorder = Recorder()
    report = evaluate_robustness(
        moons.model, batches, 0.1, eps_grid=(0.0, 0.1), pgd_steps=2, seed=3, max_samples=60,
        autoattack_version="custom", autoattack_attacks=["apgd-ce"], autoattack_samples=20,
        extra_attacks=[NamedAttack("recorder", recorder)],
        masking_kwargs={"square_queries": 5, "square_max_samples": 40, "large_eps": None},
    )
    evaluated = stratified_subset(y_all, 60, seed=3)
    assert torch.equal(torch.cat(recorder.seen), x_all[evaluated])  # the attacks stream this subset
    got = Counter(y_all[evaluated].tolist())
    assert all(abs(got[c] - 60 * n / len(y_all)) < 1 for c, n in Counter(y_all.tolist()).items())
    y_eval = y_all[evaluated]
    aa_positions = stratified_subset(y_eval, 20, seed=3)
    assert torch.equal(seen["autoattack"], x_all[evaluated][aa_positions])
    square_positions = stratified_subset(y_eval, 40, seed=3)
    assert torch.equal(seen["square"], x_all[evaluated][square_positions])
    assert set(aa_positions.tolist()) <= set(square_positions.tolist())  # nested: the same samples compared
    assert report.n_samples == 60 and report.metadata["samples"] == "60 of 200 samples, stratified, seed 3"
    assert report.autoattack_settings["subset"] == "20 of 60 samples, stratified, seed 3"
    assert report.attacks["autoattack"]["settings"]["subset"] == "20 of 60 samples, stratified, seed 3"
    assert report.metadata["masking_checks"]["square_subset"] == "40 of 60 samples, stratified, seed 3"
    assert report.worst_case["n_samples"] == 20  # AutoAttack's samples, common to every attack
    assert "20 of 60 samples, stratified, seed 3" in report.to_markdown()
