"""AutoAttack through pyautoattack, cross-checked against torchattacks' port.

Cross-check tolerance: 3 points on 100 samples (moons, APGD-CE) and 4 points on 50 samples
(digits, standard AutoAttack), i.e. at most 3 resp. 2 samples. torchattacks' APGD and AutoAttack
are ports of the reference code run here with the same budget (APGD-CE: 100 iterations,
5 restarts; standard: APGD-CE, APGD-T, FAB-T, Square-5000) and the same seed; they may still
disagree on a few borderline samples because of different random streams (torchattacks'
AutoAttack draws its own seeds per sub-attack) and floating-point order. Measured: identical
robust accuracies (moons eps 0.1: 81% both; digits eps 0.05: 70% both).
"""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

from lsa_train.evaluation import autoattack_accuracy, clean_accuracy, pgd_accuracy
from lsa_train.evaluation.utils import FlatToImage


@pytest.fixture
def needs_pyautoattack():
    pytest.importorskip("pyautoattack", reason="AutoAttack evaluation needs pyautoattack (pip install pyautoattack)")


def _worst_case_accuracy(model, x, y, x_adv) -> float:
    """AutoAttack's convention: robust = correct when clean and when attacked."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    return ok.float().mean().item()


@pytest.mark.usefixtures("needs_pyautoattack")
def test_custom_apgd_ce_is_bounded(moons):
    n, eps = 100, 0.1
    x, y = moons.x_test[:n], moons.y_test[:n]
    result = autoattack_accuracy(
        moons.model, moons.x_test, moons.y_test, eps, version="custom", attacks=["apgd-ce"], n_samples=n
    )
    robust = result["robust_accuracy"]
    assert result["n_samples"] == n and result["attacks"] == ["apgd-ce"] and result["skipped"] == {}
    assert result["clean_accuracy"] == clean_accuracy(moons.model, [(x, y)])
    assert 0.0 <= robust <= result["clean_accuracy"]
    assert robust <= pgd_accuracy(moons.model, [(x, y)], eps, seed=0) + 0.02
    assert result["per_attack"] == {"apgd-ce": robust}


@pytest.mark.usefixtures("needs_pyautoattack")
def test_apgd_matches_torchattacks(moons):
    torchattacks = pytest.importorskip("torchattacks")
    n, eps = 100, 0.1
    x, y = moons.x_test[:n], moons.y_test[:n]
    ours = autoattack_accuracy(moons.model, x, y, eps, version="custom", attacks=["apgd-ce"], seed=0)
    # torchattacks' APGD also needs image-shaped inputs; same budget as AutoAttack's custom APGD-CE.
    image_model = FlatToImage(moons.model, (2,))
    apgd = torchattacks.APGD(image_model, norm="Linf", eps=eps, steps=100, n_restarts=5, seed=0, loss="ce")
    x_adv = apgd(FlatToImage.to_image(x), y).reshape_as(x)
    theirs = _worst_case_accuracy(moons.model, x, y, x_adv)
    assert abs(ours["robust_accuracy"] - theirs) <= 0.03, (ours["robust_accuracy"], theirs)


@pytest.mark.usefixtures("needs_pyautoattack")
def test_standard_matches_torchattacks_on_digits(digits):
    torchattacks = pytest.importorskip("torchattacks")
    n, eps = 50, 0.05
    x, y = digits.x_test[:n], digits.y_test[:n]
    ours = autoattack_accuracy(digits.model, x, y, eps, version="standard", seed=0)
    assert ours["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and ours["skipped"] == {}
    port = torchattacks.AutoAttack(digits.model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    theirs = _worst_case_accuracy(digits.model, x, y, port(x, y))
    for p in digits.model.parameters():  # torchattacks' FAB calls backward(): the session's model is shared
        p.grad = None
    assert abs(ours["robust_accuracy"] - theirs) <= 0.04, (ours["robust_accuracy"], theirs)
    assert ours["robust_accuracy"] <= pgd_accuracy(digits.model, [(x, y)], eps, seed=0) + 0.02
    assert ours["robust_accuracy"] < ours["clean_accuracy"]


@pytest.mark.usefixtures("needs_pyautoattack")
def test_standard_on_binary_model_skips_dlr_targeted(moons):
    result = autoattack_accuracy(moons.model, moons.x_test, moons.y_test, 0.1, n_samples=50, square_queries=500)
    assert "apgd-t" in result["skipped"]
    assert result["attacks"] == ["apgd-ce", "fab-t", "square"]
    per_attack = list(result["per_attack"].values())
    assert all(b <= a for a, b in itertools.pairwise(per_attack))
    assert per_attack[-1] == result["robust_accuracy"] <= result["clean_accuracy"]


@pytest.mark.usefixtures("needs_pyautoattack")
def test_rand_version_passthrough(moons):
    result = autoattack_accuracy(moons.model, moons.x_test, moons.y_test, 0.1, version="rand", n_samples=30)
    assert result["version"] == "rand"
    assert result["attacks"] == ["apgd-ce"] and "apgd-dlr" in result["skipped"]
    assert 0.0 <= result["robust_accuracy"] <= result["clean_accuracy"]


@pytest.mark.usefixtures("needs_pyautoattack")
def test_state_is_restored(moons):
    model = moons.model
    model.train()
    rng = torch.get_rng_state()
    try:
        autoattack_accuracy(model, moons.x_test, moons.y_test, 0.1, version="custom", attacks=["fab"], n_samples=20)
        assert model.training and all(m.training for m in model.modules())
        assert all(p.requires_grad and p.grad is None for p in model.parameters())  # FAB calls backward()
        assert torch.equal(torch.get_rng_state(), rng)  # pyautoattack reseeds the global RNG internally
    finally:
        model.eval()


def test_missing_package_gives_install_hint(moons, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` fail
    with pytest.raises(ImportError, match="pip install pyautoattack"):
        autoattack_accuracy(moons.model, moons.x_test, moons.y_test, 0.1)


@pytest.mark.usefixtures("needs_pyautoattack")
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": "custom"}, "needs a non-empty list"),
        ({"version": "standard", "attacks": ["apgd-ce"]}, "only be chosen"),
        ({"version": "custom", "attacks": ["pgd"]}, "unknown AutoAttack attacks"),
        ({"version": "fast"}, "version must be"),
        ({"norm": "L3"}, "norm must be"),
        ({"n_samples": 0}, "n_samples"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(moons, kwargs, match):
    with pytest.raises(ValueError, match=match):
        autoattack_accuracy(moons.model, moons.x_test, moons.y_test, 0.1, **kwargs)


@pytest.mark.usefixtures("needs_pyautoattack")
def test_reference_sanity_warnings_are_returned(masked_moons, caplog):
    """pyautoattack's own check flags Square beating APGD on the zero-gradient model."""
    result = autoattack_accuracy(
        masked_moons.model,
        masked_moons.x_test,
        masked_moons.y_test,
        0.2,
        version="custom",
        attacks=["apgd-ce", "square"],
        n_samples=100,
        square_queries=300,
    )
    per_attack = result["per_attack"]
    assert per_attack["square"] < per_attack["apgd-ce"] - 0.05
    assert any("Square Attack has decreased the robust accuracy" in w for w in result["warnings"])
    assert any("pyautoattack: Square Attack" in r.getMessage() for r in caplog.records)
