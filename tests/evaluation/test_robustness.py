"""Streaming evaluators and the R&G score on a trained two-moons MLP."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsa_train.attacks import FGSM, PGD
from lsa_train.evaluation import (
    PAPER_EPS_GRID,
    attack_accuracy,
    clean_accuracy,
    collect_samples,
    eps_multiples_grid,
    evaluate_robustness,
    fgsm_sweep,
    pgd_accuracy,
    rg_score,
)


def threshold_model() -> nn.Module:
    """Class 1 iff ``x0 > 0.5`` (``x1`` is ignored): FGSM moves ``x0`` by ``eps`` towards the other
    class, so a correctly classified sample survives exactly the radii below its margin ``|x0 - 0.5|``."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, -5.0]))
    return model.eval()


def test_rg_score_of_hand_computed_sweep():
    # margins 0.05, 0.15, 0.25, 0.35, 0.45 (correct, both classes) and one misclassified sample
    x = torch.tensor([[0.55, 0.3], [0.35, 0.9], [0.75, 0.1], [0.15, 0.5], [0.95, 0.7], [0.9, 0.2]])
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    sweep = fgsm_sweep(threshold_model(), [(x, y)])
    assert list(sweep) == list(PAPER_EPS_GRID)
    # eps 0: 5 of 6; each step of 0.1 passes one more margin: 4, 3, 2, 1, 0 of 6
    assert list(sweep.values()) == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])
    assert rg_score(sweep) == pytest.approx(100 * 15 / 6)  # 250.0


def test_rg_score_paper_example():
    # MNIST, normal training (LSA paper, Table): 98.82 + 82.1 + 47.2 + 17.87 + 6.96 + 4.25.
    sweep = {0.0: 0.9882, 0.1: 0.821, 0.2: 0.472, 0.3: 0.1787, 0.4: 0.0696, 0.5: 0.0425}
    assert rg_score(sweep) == pytest.approx(257.2)


def test_rg_score_needs_eps_zero(moons):
    sweep = fgsm_sweep(moons.model, moons.batches(), eps_grid=(0.1, 0.2, 0.3))
    assert list(sweep) == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="eps=0"):
        rg_score(sweep)


def test_rg_score_rejects_percent():
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        rg_score({0.0: 98.8, 0.1: 82.1})


def test_sweep_at_zero_is_clean_accuracy(moons):
    clean = clean_accuracy(moons.model, moons.batches())
    sweep = fgsm_sweep(moons.model, moons.batches())
    assert 0.85 <= clean <= 1.0
    assert sweep[0.0] == clean


def test_accuracy_falls_with_eps_on_normal_model(moons):
    sweep = fgsm_sweep(moons.model, moons.batches())
    accs = list(sweep.values())
    assert all(later <= earlier for earlier, later in itertools.pairwise(accs)), sweep
    assert accs[-1] < accs[0] - 0.5


def test_sweep_matches_fgsm_attack(moons):
    """One gradient per batch for the whole grid gives exactly lsa_train.attacks.FGSM's images."""
    grid = (0.05, 0.1, 0.25)
    sweep = fgsm_sweep(moons.model, moons.batches(), grid)
    for eps in grid:
        assert sweep[eps] == attack_accuracy(moons.model, moons.batches(), FGSM(eps))


def test_streaming_small_batches_equal_one_batch(moons):
    loader = DataLoader(TensorDataset(moons.x_test, moons.y_test), batch_size=7, shuffle=False)
    one_batch = [(moons.x_test, moons.y_test)]
    assert clean_accuracy(moons.model, loader) == clean_accuracy(moons.model, one_batch)
    assert fgsm_sweep(moons.model, loader) == fgsm_sweep(moons.model, one_batch)
    fgsm = FGSM(0.2)
    assert attack_accuracy(moons.model, loader, fgsm) == attack_accuracy(moons.model, one_batch, fgsm)


def test_max_samples_truncates(moons):
    loader = DataLoader(TensorDataset(moons.x_test, moons.y_test), batch_size=7)
    expected = clean_accuracy(moons.model, [(moons.x_test[:50], moons.y_test[:50])])
    assert clean_accuracy(moons.model, loader, max_samples=50) == expected
    x, y = collect_samples(loader, 50)
    assert x.shape == (50, 2) and torch.equal(y, moons.y_test[:50])


def test_pgd_accuracy(moons):
    batches = moons.batches()
    clean = clean_accuracy(moons.model, batches)
    fgsm = fgsm_sweep(moons.model, batches, (0.1,))[0.1]
    pgd = pgd_accuracy(moons.model, batches, 0.1, seed=0)
    assert 0.0 <= pgd <= fgsm + 0.01  # on this smooth model PGD is at least as strong as FGSM
    assert pgd < clean
    assert pgd_accuracy(moons.model, batches, 0.0) == clean
    assert pgd == attack_accuracy(moons.model, batches, PGD(0.1, steps=20, seed=0))
    assert pgd_accuracy(moons.model, batches, 1.0, seed=0) == 0.0
    assert 0.0 <= pgd_accuracy(moons.model, batches, 0.5, norm="l2", seed=0) <= clean


class _Probe(nn.Module):
    """Dropout + BatchNorm around the moons MLP, to check that modes and buffers are restored."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.inner = inner
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.inner(self.bn(x)))


def test_model_state_is_restored(moons):
    probe = _Probe(moons.model)
    probe.train()
    probe.inner.eval()  # mixed modes must come back as they were
    buffers = {k: v.clone() for k, v in probe.state_dict().items()}
    batches = moons.batches()
    clean_accuracy(probe, batches)
    fgsm_sweep(probe, batches, (0.0, 0.1))
    pgd_accuracy(probe, batches, 0.1, steps=3)
    assert probe.training and probe.bn.training and probe.drop.training and not probe.inner.training
    for key, value in probe.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    assert all(p.grad is None for p in probe.parameters())


def test_works_under_no_grad_and_with_generators(moons):
    with torch.no_grad():
        sweep = fgsm_sweep(moons.model, iter(moons.batches()), (0.0, 0.2))
    assert sweep == fgsm_sweep(moons.model, moons.batches(), (0.0, 0.2))


def test_bad_inputs(moons):
    with pytest.raises(ValueError, match="no samples"):
        clean_accuracy(moons.model, [])
    with pytest.raises(ValueError, match="tuple or list"):
        clean_accuracy(moons.model, [moons.x_test])
    with pytest.raises(ValueError, match="integer class labels"):
        clean_accuracy(moons.model, [(moons.x_test, moons.y_test.float())])
    with pytest.raises(ValueError, match="eps_grid"):
        fgsm_sweep(moons.model, moons.batches(), (0.0, -0.1))
    with pytest.raises(ValueError, match="max_samples"):
        clean_accuracy(moons.model, moons.batches(), max_samples=0)


def test_eps_multiples_grid_follows_the_training_eps():
    assert eps_multiples_grid(0.1) == PAPER_EPS_GRID  # 3 x 0.1 is 0.3, not 0.30000000000000004
    assert eps_multiples_grid(8 / 255) == pytest.approx(tuple(k * 8 / 255 for k in range(6)))
    assert eps_multiples_grid(0.3) == (0.0, 0.3, 0.6, 0.9, 1.0)  # capped at the whole input box
    assert eps_multiples_grid(0.1, also=(0.05,)) == (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert eps_multiples_grid(0.0) == (0.0,)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        eps_multiples_grid(-0.1)


def test_evaluation_grid_defaults_to_multiples_of_its_eps(moons):
    for eps in (0.05, 0.1):
        report = evaluate_robustness(moons.model, moons.batches(), eps, pgd_steps=3, masking_checks=False,
                                     max_samples=50)
        assert tuple(report.fgsm_sweep) == eps_multiples_grid(eps)
    given = evaluate_robustness(moons.model, moons.batches(), 0.1, eps_grid=(0.0, 0.3), pgd_steps=3,
                                masking_checks=False, max_samples=50)
    assert tuple(given.fgsm_sweep) == (0.0, 0.3)
