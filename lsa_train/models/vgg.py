"""CIFAR-style VGG with BatchNorm (one ``512 -> num_classes`` linear classifier)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lsa_train.models.inputs import InputSize, image_size
from lsa_train.models.registry import register_model

#: Conv widths per stage; ``"M"`` is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG for small images: ``features`` (conv3x3-BN-ReLU blocks and max-pools), pool, ``classifier``.

    Args:
        config: Conv widths and ``"M"`` (max-pool) markers, e.g. ``VGG_CONFIGS["vgg19"]``.
        num_classes: Output logits.
        in_channels: Input channels ``C``.

    Convs keep their bias (as in the reference CIFAR VGG, so parameter counts match it) although a
    BatchNorm follows. The max-pools use ``ceil_mode=True`` (identical to floor mode on even sizes, so 32x32 CIFAR
    is unchanged) so that a 1x1 map stays 1x1 instead of vanishing; with the adaptive average
    pool to 1x1 the net accepts any input size (e.g. 8x8, 28x28).
    """

    def __init__(self, config: Sequence[int | str], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _vgg(config_name: str, num_classes: int, in_channels: int, input_size: InputSize, kwargs: dict[str, object]) -> VGG:
    if kwargs:
        raise TypeError(f"{config_name} got unexpected arguments {sorted(kwargs)}")
    image_size(input_size)  # images only
    return VGG(VGG_CONFIGS[config_name], num_classes, in_channels)


@register_model
def vgg11(*, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, **kwargs: object) -> nn.Module:
    """VGG-11 with BatchNorm, CIFAR style (any input size; ``input_size`` is not needed)."""
    return _vgg("vgg11", num_classes, in_channels, input_size, kwargs)


@register_model
def vgg19(*, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, **kwargs: object) -> nn.Module:
    """VGG-19 with BatchNorm, CIFAR style (any input size; ``input_size`` is not needed)."""
    return _vgg("vgg19", num_classes, in_channels, input_size, kwargs)
