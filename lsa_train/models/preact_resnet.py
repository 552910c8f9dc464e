"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The CIFAR variant used by Wong et al. ("Fast is better than free") and Rice et al.
("Overfitting in adversarially robust deep learning"): 3x3 stem, BN-ReLU-conv blocks with a
1x1 projection shortcut (no BN) applied to the pre-activated input, and a final BN-ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lsa_train.models.inputs import InputSize, image_size
from lsa_train.models.registry import register_model


class PreActBlock(nn.Module):
    """``BN-ReLU-conv3x3-BN-ReLU-conv3x3`` plus shortcut.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` and of the projection shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W) -> (N, planes, H / stride, W / stride)``."""
        out = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images.

    Args:
        blocks: PreActBlocks per stage (4 stages of 64, 128, 256, 512 channels).
        num_classes: Output logits.
        in_channels: Input channels ``C``.

    The final pool is adaptive (the reference code's ``avg_pool2d(4)`` on 32x32 inputs), so
    any input size works.
    """

    def __init__(self, blocks: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            layers = []
            for i in range(count):
                layers.append(PreActBlock(in_planes, planes, (1 if stage == 1 else 2) if i == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model
def preact_resnet18(
    *, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, **kwargs: object
) -> nn.Module:
    """Pre-activation ResNet-18 (blocks 2-2-2-2; any input size)."""
    if kwargs:
        raise TypeError(f"preact_resnet18 got unexpected arguments {sorted(kwargs)}")
    image_size(input_size)  # images only
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)
