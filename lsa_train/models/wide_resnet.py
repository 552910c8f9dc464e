"""Wide ResNets (Zagoruyko & Komodakis 2016) as in the TRADES and MART reference code."""

from __future__ import annotations

import math

import torch
from torch import nn

from lsa_train.models.inputs import InputSize, image_size
from lsa_train.models.registry import register_model


class WideBasicBlock(nn.Module):
    """``BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3`` plus shortcut (TRADES ``BasicBlock``).

    When the width changes, the 1x1 projection shortcut takes the pre-activated input
    ``relu1(bn1(x))``, as in the reference code; otherwise the shortcut is ``x`` itself.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Stride of ``conv1`` and of the projection shortcut.
        drop_rate: Dropout probability between the two convs.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W) -> (N, out_planes, H / stride, W / stride)``."""
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: stem conv, three stages (16k, 32k, 64k channels), BN-ReLU, pool, fc.

    Args:
        depth: Total depth; ``(depth - 4)`` must be divisible by 6 (``n = (depth - 4) / 6``
            blocks per stage).
        widen_factor: Width multiplier ``k``.
        num_classes: Output logits.
        in_channels: Input channels ``C``.
        drop_rate: Dropout inside the blocks (0 in TRADES/MART).

    Convs use He-normal init (fan-out), BN weight 1 / bias 0 and zero linear bias, as in the
    reference code. The final pool is adaptive (``avg_pool2d(8)`` on 32x32 in the reference).
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wide_resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(WideBasicBlock(in_planes, planes, stride if i == 0 else 1, drop_rate))
                in_planes = planes
            self.add_module(f"block{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model
def wide_resnet(
    depth: int,
    widen_factor: int,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: InputSize = 32,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Generic builder: WRN-``depth``-``widen_factor`` (see :class:`WideResNet`).

    Through the registry ``depth`` and ``widen_factor`` are required keyword arguments:
    ``create_model("wide_resnet", num_classes=10, depth=22, widen_factor=4)``.
    """
    image_size(input_size)  # images only
    return WideResNet(depth, widen_factor, num_classes, in_channels, drop_rate)


@register_model
def wrn16_1(*, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, drop_rate: float = 0.0) -> nn.Module:
    """WRN-16-1 (tiny; 2 blocks per stage, widths 16-32-64), handy for tests."""
    return wide_resnet(
        16, 1, num_classes=num_classes, in_channels=in_channels, input_size=input_size, drop_rate=drop_rate
    )


@register_model
def wrn28_10(
    *, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, drop_rate: float = 0.0
) -> nn.Module:
    """WRN-28-10 (about 36.5M parameters for 10 classes)."""
    return wide_resnet(
        28, 10, num_classes=num_classes, in_channels=in_channels, input_size=input_size, drop_rate=drop_rate
    )


@register_model
def wrn34_10(
    *, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, drop_rate: float = 0.0
) -> nn.Module:
    """WRN-34-10, the TRADES/MART CIFAR-10 model (about 46.2M parameters for 10 classes)."""
    return wide_resnet(
        34, 10, num_classes=num_classes, in_channels=in_channels, input_size=input_size, drop_rate=drop_rate
    )
