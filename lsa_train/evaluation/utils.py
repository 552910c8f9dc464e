"""Helpers shared by the evaluators: batch iteration, devices, model state and RNG isolation.

Every evaluator in :mod:`lsa_train.evaluation` streams ``(x, y)`` batches through these
helpers, so memory stays bounded by one batch whatever the size of the data set.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lsa_train.utils.modes import eval_mode  # noqa: F401 (part of this module's API)

#: What the evaluators accept as data: a ``DataLoader`` or any iterable of ``(x, y)`` batches
#: (tuples or lists; extra items after ``y`` are ignored).
Batches = Iterable[Sequence[Any]]


def resolve_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """The device to evaluate on: ``device`` if given, else the device of ``model``'s first
    parameter (or buffer), else the CPU.

    Args:
        model: The model being evaluated.
        device: An explicit device (``"cpu"``, ``"cuda:0"``, ...) or ``None``.

    Returns:
        A :class:`torch.device`.
    """
    if device is not None:
        return torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_max_samples(max_samples: int | None) -> int | None:
    """Validates a ``max_samples`` argument (``None`` or an integer ``>= 1``)."""
    if max_samples is None:
        return None
    if isinstance(max_samples, bool) or int(max_samples) != max_samples or max_samples < 1:
        raise ValueError(f"max_samples must be None or an integer >= 1, got {max_samples!r}")
    return int(max_samples)


def check_eps_value(name: str, eps: float) -> float:
    """Validates a perturbation radius: a finite float ``>= 0``."""
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return value


def check_tolerance(name: str, tol: float) -> float:
    """Validates an accuracy tolerance: a fraction in ``[0, 1]``."""
    value = float(tol)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1] (accuracies are fractions, not percent), got {tol!r}")
    return value


def require_reiterable(batches: Batches, what: str) -> None:
    """Raises if ``batches`` is a one-shot iterator, which a multi-pass evaluation would exhaust.

    Args:
        batches: The data.
        what: The caller's name, for the message.
    """
    if iter(batches) is batches:
        raise ValueError(
            f"{what} makes several passes over the data; pass a DataLoader or a list of batches, "
            "not a one-shot iterator or generator"
        )


def iter_batches(
    batches: Batches, device: torch.device, max_samples: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields ``(x, y)`` batches moved to ``device``, stopping after ``max_samples`` samples.

    Args:
        batches: A ``DataLoader`` or iterable of ``(x, y, ...)`` batches; ``x`` is ``(B, ...)``
            floating point, ``y`` is ``(B,)`` integer class indices.
        device: Where to move the tensors.
        max_samples: Stop after this many samples (the last batch is truncated); ``None`` for all.

    Yields:
        ``x`` ``(B, ...)`` and ``y`` ``(B,)`` int64 on ``device``; empty batches are skipped.

    Raises:
        ValueError: If a batch is not an ``(x, y, ...)`` sequence of tensors with matching
            first dimensions, or ``y`` is not a vector of class indices.
    """
    max_samples = check_max_samples(max_samples)
    seen = 0
    for index, batch in enumerate(batches):
        if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence) or len(batch) < 2:
            raise ValueError(f"batch {index} must be an (x, y) tuple or list, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ValueError(f"batch {index}: x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
        if y.ndim != 1 or y.is_floating_point() or x.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"batch {index}: need x (B, ...) and integer class labels y (B,), got x {tuple(x.shape)} "
                f"and y {tuple(y.shape)} ({y.dtype})"
            )
        if max_samples is not None:
            room = max_samples - seen
            if room <= 0:
                break
            if x.shape[0] > room:
                x, y = x[:room], y[:room]
        if x.shape[0] == 0:
            continue
        seen += x.shape[0]
        yield x.to(device, non_blocking=True), y.to(device, dtype=torch.long, non_blocking=True)
        if max_samples is not None and seen >= max_samples:
            break


def collect_samples(
    batches: Batches, n_samples: int | None = None, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Concatenates the first ``n_samples`` samples of ``batches`` into two tensors.

    Only for evaluations that need all samples at once (AutoAttack); keep ``n_samples`` small.

    Args:
        batches: A ``DataLoader`` or iterable of ``(x, y, ...)`` batches.
        n_samples: How many samples to take; ``None`` takes all (unbounded memory).
        device: Where to put the result.

    Returns:
        ``x`` ``(n, ...)`` and ``y`` ``(n,)`` int64, ``n = min(n_samples, len(data))``.

    Raises:
        ValueError: If ``batches`` yields no samples.
    """
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for x, y in iter_batches(batches, torch.device(device), n_samples):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("the data yielded no samples")
    return torch.cat(xs), torch.cat(ys)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Sets ``requires_grad=False`` on every parameter of ``model`` and restores the flags on exit.

    Third-party attacks that call ``loss.backward()`` (FAB in AutoAttack) would otherwise add
    to the parameters' ``.grad``; frozen parameters also make their backward passes cheaper.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Restores the global torch RNG state (CPU, and ``device`` if it is a CUDA device) on exit.

    Reference attack implementations call ``torch.manual_seed`` internally; this keeps them
    from reseeding the caller's RNG stream.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class FlatToImage(nn.Module):
    """Presents a model of inputs ``(N, *shape)`` as a model of image-shaped inputs ``(N, 1, 1, D)``.

    Square Attack implementations assume ``(N, C, H, W)`` inputs; tabular / flat inputs
    ``(N, D)`` are attacked as a ``1 x D`` single-channel image (``D = prod(shape)``).

    The wrapper's own ``training`` flag starts ``False`` (the wrapped model's flags are left
    alone): torchattacks puts a model whose top-level flag is ``True`` back into train mode
    after every attack.

    Args:
        model: The wrapped classifier.
        sample_shape: The per-sample input shape the wrapped model expects, e.g. ``(2,)``.
    """

    def __init__(self, model: nn.Module, sample_shape: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.training = False

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``x`` ``(N, 1, 1, D)`` to the model's logits ``(N, K)``."""
        return self.model(x.reshape(x.shape[0], *self.sample_shape))

    @staticmethod
    def to_image(x: Tensor) -> Tensor:
        """Reshapes a batch ``(N, ...)`` to ``(N, 1, 1, D)``."""
        return x.reshape(x.shape[0], 1, 1, -1)
