"""Shared fixtures: tiny models and batches that run in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)  # the suite's models are tiny: one thread is fastest and steady under load


class TinyCNN(nn.Module):
    """Conv-BN-ReLU(inplace) x2 with a shared ReLU, then a linear head; input (N, 1, 8, 8)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.head(x.flatten(1))


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ELU(), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 2))


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA device: without one they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu; experiments/bench/gpu_check.py runs them)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _temporary_signing_key() -> None:
    """Runs signed by the suite use a key of their own (lsa_train.signing), never the user's."""
    import tempfile

    from lsa_train.signing import KEY_ENV

    folder = tempfile.mkdtemp(prefix="lsa_train_key_")
    os.environ[KEY_ENV] = os.path.join(folder, "signing.key")


_temporary_signing_key()
