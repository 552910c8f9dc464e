"""Parsing the ``in_channels`` / ``input_size`` pair that every model entry point receives."""

from __future__ import annotations

from collections.abc import Sequence

#: ``int`` (square images), ``(H, W)`` (images), ``(D,)`` or ``None`` (vectors).
InputSize = int | Sequence[int] | None


def is_vector_input(input_size: InputSize) -> bool:
    """Whether ``input_size`` describes vector inputs ``(N, D)``: ``None`` or a 1-tuple ``(D,)``."""
    return input_size is None or (not isinstance(input_size, int) and len(input_size) == 1)


def image_size(input_size: InputSize) -> tuple[int, int]:
    """``(H, W)`` in pixels from an int ``S`` (square) or an ``(H, W)`` pair.

    Raises:
        ValueError: ``input_size`` is not an image size or has a non-positive entry.
    """
    message = f"this model takes images: input_size must be an int or (H, W) of positive ints, got {input_size!r}"
    if isinstance(input_size, bool) or input_size is None:
        raise ValueError(message + " (only mlp_a takes vectors)")
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
        raise ValueError(message)
    return int(size[0]), int(size[1])


def input_shape(in_channels: int, input_size: InputSize) -> tuple[int, ...]:
    """Per-sample input shape: ``(D,)`` for vectors, ``(C, H, W)`` for images.

    For ``input_size=None`` the vector length ``D`` is ``in_channels``; for ``(D,)`` it is ``D``.
    """
    if input_size is None:
        return (int(in_channels),)
    if is_vector_input(input_size):
        assert not isinstance(input_size, int)
        return (int(input_size[0]),)
    return (int(in_channels), *image_size(input_size))
