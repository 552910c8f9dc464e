"""CIFAR-style ResNets (He et al. 2016): 3x3 stem with stride 1, no max-pool, BasicBlocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lsa_train.models.inputs import InputSize, image_size
from lsa_train.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection, as in torchvision.

    ``relu`` is one module called twice per forward (after ``bn1`` and after the addition), so
    probes see it as ``relu:1`` and ``relu:2``.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` (and of the projection shortcut).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W) -> (N, planes, H / stride, W / stride)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet for small images; module names follow torchvision (``layer1.0.relu``, ``fc``).

    Args:
        blocks: BasicBlocks per stage (4 stages of 64, 128, 256, 512 channels).
        num_classes: Output logits.
        in_channels: Input channels ``C``.

    The global average pool is adaptive, so any input size works (8x8 digits, 32x32 CIFAR).
    """

    def __init__(self, blocks: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        in_planes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            stride = 1 if stage == 1 else 2
            layers = []
            for i in range(count):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _resnet(
    name: str, blocks: Sequence[int], num_classes: int, in_channels: int, input_size: InputSize, kwargs: dict
) -> ResNet:
    if kwargs:
        raise TypeError(f"{name} got unexpected arguments {sorted(kwargs)}")
    image_size(input_size)  # images only
    return ResNet(blocks, num_classes, in_channels)


@register_model
def resnet18(*, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, **kwargs: object) -> nn.Module:
    """ResNet-18, CIFAR style (blocks 2-2-2-2; any input size)."""
    return _resnet("resnet18", (2, 2, 2, 2), num_classes, in_channels, input_size, kwargs)


@register_model
def resnet34(*, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, **kwargs: object) -> nn.Module:
    """ResNet-34, CIFAR style (blocks 3-4-6-3; any input size)."""
    return _resnet("resnet34", (3, 4, 6, 3), num_classes, in_channels, input_size, kwargs)
