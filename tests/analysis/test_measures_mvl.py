import math

import pytest
import torch

from lsa_train.analysis import get_measure, list_measures, select_mvl
from lsa_train.analysis.measures import cosine_distance, mse, relative_error


def test_relative_error_is_per_sample_frobenius_ratio():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(relative_error(a, b), torch.tensor([4.0 / 5.0, 1.0]))


def test_measures_flatten_feature_maps():
    a, b = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    expected = (a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert torch.allclose(relative_error(a, b), expected)
    assert torch.allclose(mse(a, b), ((a - b) ** 2).flatten(1).mean(1))
    assert cosine_distance(a, a).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["relative_error", "mse", "cosine"])
def test_zero_norm_is_finite_with_finite_gradients(name):
    measure = get_measure(name)
    clean = torch.zeros(3, 5, requires_grad=True)
    perturbed = torch.tensor([[0.0] * 5, [1e-3] * 5, [1.0] * 5], requires_grad=True)
    value = measure(clean, perturbed)
    assert torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(clean.grad).all() and torch.isfinite(perturbed.grad).all()
    same = measure(torch.zeros(2, 4), torch.zeros(2, 4))
    assert torch.equal(same, torch.zeros(2))


@pytest.mark.parametrize("name", ["relative_error", "mse", "cosine"])
def test_gradient_flows_to_both_inputs(name):
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    get_measure(name)(a, b).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_measures_compute_in_float32_under_low_precision():
    a = torch.randn(2, 8).bfloat16()
    assert relative_error(a, a * 1.5).dtype == torch.float32


def test_registry_aliases_and_unknown_name():
    assert "relative_error" in list_measures()
    assert get_measure("relative-error") is relative_error
    with pytest.raises(
        ValueError,
        match=r"unknown measure 'l3'; choose one of \['cosine', 'mse', 'relative_error', 'relative_error_pairwise'\]",
    ):
        get_measure("l3")


def test_algorithm_one_on_hand_made_matrix():
    cm = torch.tensor([[0.1, 0.2, 0.9, 0.1], [0.1, 0.2, 0.7, 0.3]])
    mu = cm.mean().item()
    sigma = cm.std(unbiased=False).item()
    means = cm.mean(0)
    assert math.isclose(mu, 0.325, rel_tol=1e-6)
    expected = [i for i in range(4) if means[i] - mu > 1.0 * sigma]
    assert expected == [2]
    assert select_mvl(cm, eta=1.0) == [2]
    assert select_mvl(cm, eta=0.0) == [2]
    assert select_mvl(cm, eta=-0.0) == [2]
    assert select_mvl(cm, eta=5.0) == []


def test_eta_uses_population_std():
    # means 0, 0, 1 -> mu = 1/3, population sigma = sqrt(2)/3 ~ 0.4714; sample std would be 0.5164
    cm = torch.tensor([[0.0, 0.0, 1.0]])
    assert select_mvl(cm, eta=1.35) == [2]  # 2/3 - 0 > 1.35 * 0.4714 = 0.636
    assert select_mvl(cm, eta=1.30) == [2]
    assert select_mvl(cm, eta=1.42) == []  # 0.667 < 1.42 * 0.4714 = 0.669


def test_top_k_returns_sorted_largest():
    cm = torch.tensor([[0.5, 0.1, 0.9, 0.7]])
    assert select_mvl(cm, top_k=2) == [2, 3]
    assert select_mvl(cm, top_k=4) == [0, 1, 2, 3]


def test_min_layers_fills_an_eta_selection_with_the_most_vulnerable_probes():
    cm = torch.tensor([[0.0, 0.25, 1.0, 0.0], [0.0, 0.25, 0.5, 0.5]])  # means 0, 0.25, 0.75, 0.25 (exact)
    assert select_mvl(cm, eta=5.0) == []  # Algorithm 1 alone keeps nothing
    assert select_mvl(cm, eta=5.0, min_layers=1) == [2]
    assert select_mvl(cm, eta=5.0, min_layers=2) == [1, 2]  # tie of probes 1 and 3 at 0.25: the earlier
    assert select_mvl(cm, eta=1.0, min_layers=1) == [2]  # enough pass the cut-off: nothing added
    assert select_mvl(cm, eta=0.0, min_layers=0) == [2]
    same = torch.tensor([[0.3, 0.3], [0.1, 0.1]])  # two probes with equal CMs: no probe is above the mean
    assert select_mvl(same, eta=0.0) == [] and select_mvl(same, eta=0.0, min_layers=1) == [0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eta": -0.5}, "eta must be >= 0, got -0.5"),
        ({"eta": None, "top_k": 0}, "top_k must be an integer >= 1, got 0"),
        ({"eta": None, "top_k": 9}, "top_k=9 exceeds the number of probes \\(4\\)"),
        ({"eta": 9.0, "min_layers": 5}, "min_layers=5 exceeds the number of probes \\(4\\)"),
        ({"eta": 1.0, "min_layers": -1}, "min_layers must be an integer >= 0, got -1"),
    ],
)
def test_mvl_rule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_mvl(torch.rand(3, 4), **kwargs)


def test_relative_error_gradient_matches_autograd_without_saving_the_difference():
    from lsa_train.analysis.measures import relative_error

    torch.manual_seed(0)
    a = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relative_error, (a, b))
    with torch.no_grad():  # the kinks: equal rows, an all-zero pair, a zero clean row
        b[1] = a[1]
        a[2], b[2] = 0, 0
        a[3] = 0

    def plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.reshape(6, -1), y.reshape(6, -1)
        return torch.linalg.vector_norm(x - y, dim=1) / torch.linalg.vector_norm(x, dim=1).clamp_min(1e-8)

    weights = torch.randn(6, dtype=torch.float64)
    ours = torch.autograd.grad(relative_error(a, b), (a, b), weights)
    reference = torch.autograd.grad(plain(a, b), (a, b), weights)
    for mine, theirs in zip(ours, reference):
        assert torch.isfinite(mine).all()
        assert torch.allclose(mine, theirs, rtol=1e-9, atol=1e-9)

    saved: list[int] = []  # autograd saves only the inputs and two norms: no (N, D) difference tensor
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        relative_error(a, b)
    assert sorted(saved) == [6, 6, 72, 72]
