"""``relative_error_pairwise``: the relative error normalized by the distance to another clean sample."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lsa_train.analysis import compute_cm, get_measure, select_probes
from lsa_train.analysis.analyze import chunk_bounds
from lsa_train.analysis.measures import relative_error, relative_error_pairwise
from lsa_train.legacy import LayerSustainabilityAnalysis
from lsa_train.training import LayerwiseRegularizer


def test_formula_on_hand_made_tensors():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    b = a + torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # sample i is compared with sample i - 1 (cyclically): 0 with 2, 1 with 0, 2 with 1
    expected = torch.tensor([1.0 / math.sqrt(5.0), 1.0 / 1.0, 0.0 / 2.0])
    torch.testing.assert_close(relative_error_pairwise(a, b), expected)
    assert get_measure("relative_error_pairwise") is relative_error_pairwise


def test_feature_maps_any_layout_and_dtypes():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    expected = (flat_a - flat_b).norm(dim=1) / (flat_a - flat_a.roll(1, 0)).norm(dim=1)
    torch.testing.assert_close(relative_error_pairwise(a, b), expected)
    channels_last = relative_error_pairwise(a.to(memory_format=torch.channels_last),
                                            b.to(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, expected)
    assert relative_error_pairwise(a.double(), b.double()).dtype == torch.float64  # float64 kept
    assert relative_error_pairwise(a.bfloat16(), b.bfloat16()).dtype == torch.float32


def test_gradient_matches_autograd_and_saves_only_the_inputs():
    torch.manual_seed(1)
    a = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relative_error_pairwise, (a, b))
    pair_a, pair_b = a[:2].detach().clone().requires_grad_(), b[:2].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(relative_error_pairwise, (pair_a, pair_b))  # two samples: partners of each other
    with torch.no_grad():  # the kinks: an unchanged sample, two equal neighbours, an all-zero pair
        b[1] = a[1]
        a[3] = a[2]
        a[4], b[4] = 0, 0

    def plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.reshape(6, -1), y.reshape(6, -1)
        pair = torch.linalg.vector_norm(x - x.roll(1, 0), dim=1).clamp_min(1e-8)
        return torch.linalg.vector_norm(x - y, dim=1) / pair

    weights = torch.randn(6, dtype=torch.float64)
    ours = torch.autograd.grad(relative_error_pairwise(a, b), (a, b), weights)
    reference = torch.autograd.grad(plain(a, b), (a, b), weights)
    for mine, theirs in zip(ours, reference):
        assert torch.isfinite(mine).all()
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)
    saved: list[int] = []  # the inputs and two (N,) norms: no difference or rolled copy is kept
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        relative_error_pairwise(a, b)
    assert sorted(saved) == [6, 6, 72, 72]


def test_zero_representations_are_finite_with_finite_gradients():
    clean = torch.zeros(3, 5, requires_grad=True)
    perturbed = torch.tensor([[0.0] * 5, [1e-3] * 5, [1.0] * 5], requires_grad=True)
    value = relative_error_pairwise(clean, perturbed)
    assert torch.isfinite(value).all() and value[0] == 0
    value.sum().backward()
    assert torch.isfinite(clean.grad).all() and torch.isfinite(perturbed.grad).all()
    assert torch.equal(relative_error_pairwise(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))


def test_a_collapsed_layer_scores_high_wherever_the_point_lies():
    # every clean sample mapped to one point far from the origin, the adversarial ones moved a little
    point = torch.full((1, 16), 25.0)  # norm 100
    clean = point.expand(8, 16).clone()
    perturbed = clean + 0.01 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert relative_error(clean, perturbed).max() < 1e-3  # the plain term rewards the collapse
    assert relative_error_pairwise(clean, perturbed).min() > 1e4  # this one does not: ||a - b|| / eps
    # it measures the change against the spread of the clean samples: a shift or a scaling changes nothing
    torch.manual_seed(2)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    shifted, scaled = relative_error_pairwise(a + 100, b + 100), relative_error_pairwise(3 * a, 3 * b)
    torch.testing.assert_close(shifted, relative_error_pairwise(a, b), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scaled, relative_error_pairwise(a, b))
    assert relative_error(a + 100, b + 100).mean() < relative_error(a, b).mean() / 10  # unlike the plain one


def test_a_batch_of_one_is_refused():
    with pytest.raises(ValueError, match=r"relative_error_pairwise needs at least 2 samples per batch.*a batch of 1"):
        relative_error_pairwise(torch.ones(1, 4), torch.zeros(1, 4))


def test_the_regularizer_term_and_stop_clean_grad():
    torch.manual_seed(3)
    clean = torch.randn(4, 2, 3, 3, requires_grad=True)
    adversarial = (clean.detach() + 0.1 * torch.randn(4, 2, 3, 3)).requires_grad_()
    term, per_probe = LayerwiseRegularizer(2.0, measure="relative_error_pairwise")(
        {"p": clean}, {"p": adversarial}, ["p"]
    )
    expected = relative_error_pairwise(clean.detach(), adversarial.detach()).mean()
    torch.testing.assert_close(per_probe["p"], expected)
    torch.testing.assert_close(term.detach(), 2.0 * expected)
    (grad_clean,) = torch.autograd.grad(term, clean, retain_graph=True)
    assert grad_clean.abs().sum() > 0  # also through the denominator: spreading the clean samples lowers it
    stopped, _ = LayerwiseRegularizer(2.0, measure="relative_error_pairwise", stop_clean_grad=True)(
        {"p": clean}, {"p": adversarial}, ["p"]
    )
    assert torch.autograd.grad(stopped, clean, allow_unused=True)[0] is None


def test_chunk_bounds_never_leave_a_single_sample():
    assert chunk_bounds(64, 32) == [(0, 32), (32, 64)]
    assert chunk_bounds(65, 32) == [(0, 32), (32, 65)]
    assert chunk_bounds(5, 1) == [(0, 2), (2, 5)]
    assert chunk_bounds(1, 32) == [(0, 1)] and chunk_bounds(0, 32) == []


def test_lsa_analysis_pairs_within_chunks_and_never_alone():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    probes = select_probes(model, torch.rand(1, 6))
    clean = torch.rand(5, 6)
    perturbed = clean + 0.05 * torch.randn(5, 6)
    # batch_size 8: chunks of 4 samples, and the fifth would be alone: it joins the chunk before
    cm = compute_cm(model, probes, clean, perturbed, measure="relative_error_pairwise", batch_size=8)
    with torch.no_grad():
        expected = relative_error_pairwise(model[:2](clean), model[:2](perturbed))
    torch.testing.assert_close(cm[:, 0], expected)
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_cm(model, probes, clean[:1], perturbed[:1], measure="relative_error_pairwise")


def test_the_legacy_api_refuses_it():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    lsa = LayerSustainabilityAnalysis(pretrained_model=model)
    with pytest.raises(ValueError, match=r"'relative_error_pairwise' is a per-sample measure.*analyze"):
        lsa.representation_comparisons(torch.rand(4, 4), torch.rand(4, 4), measure="relative_error_pairwise",
                                       verbose=False)
