"""The paper's model B: a small CNN for MNIST-like grey-scale images."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from lsa_train.models.inputs import InputSize, image_size
from lsa_train.models.registry import register_model


class CNNB(nn.Module):
    """``Conv(16,5)-ReLU-Conv(32,5)-ReLU-MaxPool(2)-Conv(64,5)-ReLU-MaxPool(2)-Flatten-Linear(100)-ReLU-Linear``.

    Args:
        num_classes: Output logits.
        in_channels: Input channels ``C``.
        input_size: ``(H, W)`` of the inputs in pixels; fixes the flattened feature size.
        padding: Zero padding of the 5x5 convolutions (0: valid, as for 28x28 MNIST; 2: same).

    The flattened size is computed with one dummy forward of ``features`` at construction.

    Raises:
        ValueError: The feature map would shrink to nothing for this ``input_size``/``padding``.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int], padding: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 16, 5, padding=padding),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(16, 32, 5, padding=padding),
                relu2=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv3=nn.Conv2d(32, 64, 5, padding=padding),
                relu3=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
            )
        )
        try:
            with torch.no_grad():
                flat = self.features(torch.zeros(1, in_channels, *input_size)).numel()
        except RuntimeError as err:
            raise ValueError(
                f"cnn_b: input {input_size} with padding={padding} shrinks to nothing; use padding=2"
            ) from err
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            OrderedDict(fc1=nn.Linear(flat, 100), relu4=nn.ReLU(), fc2=nn.Linear(100, num_classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        return self.classifier(self.flatten(self.features(x)))


@register_model
def cnn_b(
    *,
    num_classes: int,
    in_channels: int = 1,
    input_size: InputSize = 28,
    padding: int | None = None,
    **kwargs: object,
) -> nn.Module:
    """Model B of the LSA paper (MNIST CNN).

    Args:
        num_classes: Output logits.
        in_channels: Input channels (1 for MNIST).
        input_size: Side ``S`` or ``(H, W)`` of the inputs in pixels.
        padding: Padding of the 5x5 convs. ``None`` (default): 0 (valid convs, the paper's
            MNIST setting) when ``min(H, W) >= 28``, else 2 ("same"), so small inputs such as
            8x8 digits keep a non-empty feature map.
        **kwargs: Must be empty.
    """
    if kwargs:
        raise TypeError(f"cnn_b got unexpected arguments {sorted(kwargs)}")
    size = image_size(input_size)
    if padding is None:
        padding = 0 if min(size) >= 28 else 2
    return CNNB(num_classes, in_channels, size, padding)
