"""Per-channel (or per-feature) mean/std for the model's normalization layer: given or accumulated."""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Below this, a channel counts as constant and gets std 1 (normalization then only centres it).
_MIN_STD = 1e-6


def given_statistics(
    mean: Sequence[float] | None, std: Sequence[float] | None, size: int, unit: str
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Checks user-given ``mean``/``std``; ``None`` when neither is given (compute them).

    Args:
        mean, std: ``size`` values each in ``[0, 1]`` input units, or both ``None``.
        size: Number of channels (images) or features (vectors).
        unit: ``"channel"`` or ``"feature"``, for messages.

    Raises:
        ValueError: Only one given, wrong length, or a std ``<= 0`` (one line).
    """
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"give both mean and std or neither (mean={mean!r}, std={std!r})")
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != size or len(std_t) != size:
        raise ValueError(f"mean/std need {size} entries (one per {unit}), got {list(mean)} and {list(std)}")
    if not all(v > 0 for v in std_t):
        raise ValueError(f"std entries must all be > 0, got {list(std)}")
    return mean_t, std_t


class Moments:
    """Running per-channel sums in float64; :meth:`result` gives population mean and std.

    Args:
        size: Number of channels ``C`` (or features ``D``).
    """

    def __init__(self, size: int) -> None:
        self.total = torch.zeros(size, dtype=torch.float64)
        self.total_sq = torch.zeros(size, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor, channel_dim: int) -> None:
        """Adds every value of ``x`` (any shape, values in ``[0, 1]``) to its channel ``x.shape[channel_dim]``."""
        x64 = x.to(torch.float64).movedim(channel_dim, 0).flatten(1)
        self.total += x64.sum(dim=1)
        self.total_sq += x64.square().sum(dim=1)
        self.count += x64.shape[1]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per channel; a constant channel gets std 1.

        Raises:
            ValueError: Nothing was added.
        """
        if self.count == 0:
            raise ValueError("no samples to compute mean/std from")
        mean = self.total / self.count
        std = (self.total_sq / self.count - mean.square()).clamp_min(0.0).sqrt()
        std = torch.where(std > _MIN_STD, std, torch.ones_like(std))
        return tuple(mean.tolist()), tuple(std.tolist())
