"""Tiny models, data and helpers for the attack tests.

Helpers are handed out as fixtures (``make_model``, ``make_batch``, ``build_attack``,
``accuracy``) so the tests work under any pytest import mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsa_train.attacks import ATTACKS, Attack, create_attack


class MLP(nn.Module):
    """``in_dim -> 16 -> num_classes`` with BatchNorm1d and Dropout, for ``(N, in_dim)`` inputs."""

    def __init__(self, in_dim: int = 16, num_classes: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-Dropout-Linear for ``(N, 1, 8, 8)`` inputs, 3 classes."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2), nn.MaxPool2d(2)
        )
        self.head = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _make_model(kind: str, seed: int = 0) -> nn.Module:
    """A freshly initialised ``"mlp"`` (16-D inputs) or ``"cnn"`` (1x8x8 inputs) with non-trivial BN stats."""
    torch.manual_seed(seed)
    model = MLP() if kind == "mlp" else SmallCNN()
    # Give the BN layers non-default running statistics so that restoring them is observable.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(_make_batch(kind, n=16, seed=seed + 1)[0] * 2.0 + 0.3)
    return model


def _make_batch(kind: str, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in [0, 1] (including some exact 0s and 1s) and labels in {0, 1, 2}."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 16) if kind == "mlp" else (n, 1, 8, 8)
    images = torch.rand(shape, generator=generator)
    flat = images.view(n, -1)
    flat[:, 0] = 0.0
    flat[:, 1] = 1.0
    labels = torch.randint(0, 3, (n,), generator=generator)
    return images, labels


def _build_attack(name: str, **overrides: Any) -> Attack:
    """``create_attack(name)`` with small, fast settings (eps 0.1, 3 steps) unless overridden."""
    params = inspect.signature(ATTACKS[name]).parameters
    kwargs: dict[str, Any] = {"eps": 0.1}
    if "steps" in params:
        kwargs["steps"] = 3
    kwargs.update(overrides)
    return create_attack(name, **kwargs)


@pytest.fixture(scope="session")
def moons() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 2-D MLP trained on ``make_moons`` (inputs scaled to [0, 1]), in eval mode, with its data."""
    from sklearn.datasets import make_moons

    features, targets = make_moons(n_samples=1000, noise=0.1, random_state=0)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
    y = torch.tensor(targets, dtype=torch.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(500):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    for parameter in model.parameters():
        parameter.grad = None
    return model, x, y


@pytest.fixture(scope="session")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained for about a second on sklearn's 1797 digits (8x8 in [0, 1]), in eval mode."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    for parameter in model.parameters():
        parameter.grad = None
    return model, x, y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    return _make_model


@pytest.fixture
def make_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    return _make_batch


@pytest.fixture
def build_attack() -> Callable[..., Attack]:
    return _build_attack


@pytest.fixture
def accuracy() -> Callable[[nn.Module, torch.Tensor, torch.Tensor], float]:
    return _accuracy
