"""Input normalization as the first layer of a model, so every model takes inputs in ``[0, 1]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` with per-channel (images) or per-feature (vectors) statistics.

    Args:
        mean: ``C`` (images) or ``D`` (vectors) means, in input units (``[0, 1]`` scale).
        std: Matching standard deviations, all > 0.
        vector: ``False``: buffers shaped ``(1, C, 1, 1)`` for inputs ``(N, C, H, W)``;
            ``True``: buffers shaped ``(1, D)`` for inputs ``(N, D)``.

    The statistics are buffers (saved in ``state_dict``, moved by ``.to()``), not parameters.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, vector: bool = False) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(
                f"mean and std must be non-empty sequences of equal length, got {list(mean)} and {list(std)}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"std entries must be > 0, got {list(std)}")
        shape = (1, -1) if vector else (1, -1, 1, 1)
        self.vector = vector
        self.register_buffer("mean", mean_t.view(shape))
        self.register_buffer("std", std_t.view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalizes ``x`` of shape ``(N, C, H, W)`` (or ``(N, D)``); same shape out."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """A network preceded by :class:`Normalize`; forward is ``net(normalize(x))``.

    Module names stay readable for probes: ``normalize``, ``net.layer1.0.relu``, ...

    Args:
        normalize: The input normalization.
        net: The network that expects normalized inputs.
    """

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps inputs in ``[0, 1]`` to the output of ``net`` (logits ``(N, num_classes)``)."""
        return self.net(self.normalize(x))
