"""Small networks shared by test files in different folders (``tests`` is on ``sys.path``: pyproject's pytest
``pythonpath``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HalfFunctionalNet(nn.Module):
    """GELU modules, and one ReLU applied as a function after ``conv2``; input ``(N, C, 8, 8)``."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 16)
        self.act2 = nn.GELU()
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(self.act1(self.conv1(x))))
        return self.head(self.act2(self.fc(x.flatten(1))))
