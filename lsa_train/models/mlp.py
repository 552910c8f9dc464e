"""The paper's model A: a 3-hidden-layer ELU MLP (used on the two-moons data)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from lsa_train.models.inputs import InputSize, input_shape
from lsa_train.models.registry import register_model


class MLP(nn.Sequential):
    """Fully connected net ``Flatten-Linear-ELU-(Linear-ELU) x (depth-1)-Linear``.

    Args:
        in_features: Input features ``D`` after flattening (``C * H * W`` for images).
        num_classes: Output logits.
        hidden: Width of every hidden layer.
        depth: Number of hidden layers.

    Modules are ``flatten``, ``fc1``, ``act1``, ..., ``fc<depth>``, ``act<depth>``, ``head``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 100, depth: int = 3) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(width, hidden)
            layers[f"act{i}"] = nn.ELU()
            width = hidden
        layers["head"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, D)`` or ``(N, C, H, W)`` inputs to logits ``(N, num_classes)``."""
        features = x[0].numel() if x.ndim > 1 else -1
        if features != self.in_features:
            raise ValueError(
                f"MLP expects inputs with {self.in_features} features per sample, got shape {tuple(x.shape)}"
            )
        return super().forward(x)


@register_model
def mlp_a(*, num_classes: int, in_channels: int = 3, input_size: InputSize = 32, **kwargs: object) -> nn.Module:
    """Model A of the LSA paper: ``Linear(D,100)-ELU-Linear(100,100)-ELU-Linear(100,100)-ELU-Linear(100,K)``.

    Inputs: vectors ``(N, D)`` when ``input_size`` is ``None`` (``D = in_channels``, e.g. 2 for
    the two moons) or ``(D,)``; images ``(N, C, H, W)`` otherwise, flattened to
    ``D = C * H * W``. The paper uses one logit with a sigmoid for binary tasks; we output
    ``num_classes`` logits for cross-entropy, which for ``K = 2`` is an equivalent
    parametrization (the softmax of two logits is the sigmoid of their difference).

    Args:
        num_classes: Output logits ``K``.
        in_channels: Image channels, or ``D`` when ``input_size`` is ``None``.
        input_size: ``None``/``(D,)`` for vectors, int or ``(H, W)`` for images.
        **kwargs: ``hidden`` (100) and ``depth`` (3) of :class:`MLP`.
    """
    in_features = math.prod(input_shape(in_channels, input_size))
    return MLP(in_features, num_classes, **kwargs)  # type: ignore[arg-type]
