"""Tiny two-moons data and model A for the training tests."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import make_moons
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def moons_tensors(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = make_moons(n_samples=n, noise=0.1, random_state=seed)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
    return x, torch.tensor(labels)


def model_a(hidden: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, hidden),
        nn.ELU(),
        nn.Linear(hidden, hidden),
        nn.ELU(),
        nn.Linear(hidden, hidden),
        nn.ELU(),
        nn.Linear(hidden, 2),
    )


@pytest.fixture
def moons() -> tuple[torch.Tensor, torch.Tensor]:
    return moons_tensors()


@pytest.fixture
def loaders(moons) -> tuple[DataLoader, DataLoader]:
    x, y = moons
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=64)
    return train, val


@pytest.fixture
def mlp_a() -> nn.Module:
    torch.manual_seed(0)
    return model_a()
