"""Cross-check of our PGD (Linf and L2) against torchattacks 3.5.1 on sklearn's digits.

A small CNN is trained for about a second on the 1797 8x8 digits (scaled to [0, 1], shape
``(N, 1, 8, 8)``); robust accuracies of both implementations must agree within one
percentage point, once with the same global seed (same random start draws) and once with
independent random starts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsa_train.attacks import PGD, PGDL2

torchattacks = pytest.importorskip(
    "torchattacks", reason="torchattacks (dev extra) is needed for the cross-check"
)

STEPS = 10
TOLERANCE = 0.01  # one percentage point
CASES = [("linf", 0.1), ("l2", 0.6)]  # robust accuracy in the non-trivial range, see the asserts


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) == y).float().mean().item()


def reference(norm: str, model: nn.Module, eps: float) -> torchattacks.Attack:
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    return cls(model, eps=eps, alpha=eps / 4, steps=STEPS, random_start=True)


def ours(norm: str, eps: float, seed: int | None = None) -> PGD:
    cls = PGD if norm == "linf" else PGDL2
    return cls(eps, alpha=eps / 4, steps=STEPS, random_start=True, seed=seed)


@pytest.mark.parametrize(("norm", "eps"), CASES)
def test_pgd_matches_torchattacks_with_the_same_random_start(norm, eps, digits):
    model, x, y = digits
    assert len(x) >= 1000
    assert robust_accuracy(model, x, y) > 0.95
    torch.manual_seed(2024)
    theirs = robust_accuracy(model, reference(norm, model, eps)(x, y), y)
    torch.manual_seed(2024)
    mine = robust_accuracy(model, ours(norm, eps)(model, x, y), y)
    assert 0.2 <= theirs <= 0.8, f"eps={eps} gives a trivial robust accuracy {theirs:.3f}"
    assert abs(mine - theirs) <= TOLERANCE, f"{norm}: ours {mine:.4f} vs torchattacks {theirs:.4f}"


@pytest.mark.parametrize(("norm", "eps"), CASES)
def test_pgd_matches_torchattacks_with_independent_random_starts(norm, eps, digits):
    model, x, y = digits
    torch.manual_seed(7)
    theirs = robust_accuracy(model, reference(norm, model, eps)(x, y), y)
    mine = robust_accuracy(model, ours(norm, eps, seed=11)(model, x, y), y)
    assert abs(mine - theirs) <= TOLERANCE, f"{norm}: ours {mine:.4f} vs torchattacks {theirs:.4f}"
