"""Seeded toy models for the evaluation tests: a two-moons MLP, a gradient-masked copy of it and a
10-class digits MLP (8x8 images, scikit-learn's bundled data set, no download).

Models are trained once per session and must not be modified by tests (the evaluators leave
them untouched, which ``test_robustness`` checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_moons
from torch import Tensor, nn


@dataclass
class Toy:
    """A trained model and its held-out data (inputs in ``[0, 1]``)."""

    model: nn.Module
    x_test: Tensor
    y_test: Tensor

    def batches(self, batch_size: int = 50) -> list[tuple[Tensor, Tensor]]:
        return [
            (self.x_test[i : i + batch_size], self.y_test[i : i + batch_size])
            for i in range(0, len(self.y_test), batch_size)
        ]


class QuantizedInput(nn.Module):
    """``model(round(x * levels) / levels)``: a non-differentiable input quantizer.

    ``torch.round`` has zero gradient almost everywhere, so FGSM and PGD see a zero input
    gradient (genuine gradient masking, unlike a straight-through / BPDA estimator), while a
    black-box attack that only queries the logits still finds adversarial examples.
    """

    def __init__(self, model: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and busy-waiting threads slow down by
    orders of magnitude when the CPU is shared (measured: 0.1 s -> 14 s for 300 Adam steps)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(model: nn.Module, x: Tensor, y: Tensor, steps: int, batch_size: int | None, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with single_thread():
        for _ in range(steps):
            idx = torch.randint(0, len(y), (batch_size,), generator=generator) if batch_size else slice(None)
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Runs every evaluation test single-threaded (restored afterwards, for other test folders)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def moons() -> Toy:
    """2-32-32-2 ReLU MLP, 400 full-batch Adam steps on 400 moons points; 200 test points.

    Clean test accuracy is about 0.9; FGSM accuracy falls to about 0 at eps 0.5.
    """
    x, y = make_moons(600, noise=0.1, random_state=0)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    x_t = torch.tensor(x, dtype=torch.float32)
    y_t = torch.tensor(y, dtype=torch.long)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    _train(model, x_t[:400], y_t[:400], steps=400, batch_size=None, seed=0)
    return Toy(model, x_t[400:], y_t[400:])


@pytest.fixture(scope="session")
def masked_moons(moons: Toy) -> Toy:
    """The moons MLP behind a 5-level input quantizer (zero input gradients)."""
    return Toy(QuantizedInput(moons.model).eval(), moons.x_test, moons.y_test)


@pytest.fixture(scope="session")
def digits() -> Toy:
    """64-64-10 MLP on 8x8 digit images ``(N, 1, 8, 8)`` in ``[0, 1]``; 397 test images."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    _train(model, x[:1400], y[:1400], steps=300, batch_size=128, seed=0)
    return Toy(model, x[1400:], y[1400:])
