"""Argument checks shared by the attacks; every failure is a one-line ``ValueError``."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any


def check_eps(eps: Any) -> float:
    """Returns ``eps`` as a float; raises unless it is a finite number >= 0."""
    value = _as_float("eps", eps, "a finite number >= 0")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def check_positive(name: str, value: Any) -> float:
    """Returns ``value`` as a float; raises unless it is a finite number > 0."""
    result = _as_float(name, value, "a finite number > 0")
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return result


def check_unit_interval(name: str, value: Any) -> float:
    """Returns ``value`` as a float; raises unless ``0 < value <= 1``."""
    result = _as_float(name, value, "a number in (0, 1]")
    if not 0.0 < result <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return result


def check_count(name: str, value: Any) -> int:
    """Returns ``value`` as an int; raises unless it is an integer >= 1."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if result < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return result


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Returns ``value`` lower-cased; raises unless it is one of ``choices``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value.lower()


def check_clip_range(clip_min: Any, clip_max: Any) -> tuple[float, float]:
    """Returns ``(clip_min, clip_max)`` as floats; raises unless both are finite and ordered."""
    low = _as_float("clip_min", clip_min, "a finite number")
    high = _as_float("clip_max", clip_max, "a finite number")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(
            f"clip_min must be < clip_max (both finite), got clip_min={clip_min!r}, clip_max={clip_max!r}"
        )
    return low, high


def _as_float(name: str, value: Any, expected: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
