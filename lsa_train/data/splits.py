"""Seeded split helpers and a dataset view with its own transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset


def split_indices(
    n: int, fraction: float, seed: int, labels: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into a kept part and a held-out part.

    Args:
        n: Number of samples.
        fraction: Held-out fraction in ``(0, 1)``; the held-out part has ``ceil(fraction * n)`` samples.
            An int ``>= 1`` is an absolute held-out count.
        seed: Random seed; the same seed gives the same split.
        labels: Labels ``(n,)`` to stratify by, or ``None`` for a plain random split.

    Returns:
        ``(kept, held_out)``: sorted int64 index arrays.
    """
    kept, held = train_test_split(
        np.arange(n),
        test_size=fraction,
        random_state=seed,
        shuffle=True,
        stratify=None if labels is None else np.asarray(labels),
    )
    return np.sort(kept), np.sort(held)


class TransformSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the input (labels unchanged).

    Lets the train and validation splits of one loaded dataset use different transforms
    (augmentation for training only) without loading the data twice.

    Args:
        dataset: Returns ``(input, label)`` pairs; typically with ``transform=None`` (PIL images).
        indices: Positions in ``dataset``.
        transform: Applied to each input, e.g. ``ToTensor()``.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable[[Any], Any] | None) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        x, y = self.dataset[self.indices[index]]
        return (self.transform(x) if self.transform is not None else x), y


def train_val_test_indices(
    labels: np.ndarray,
    *,
    val_fraction: float | None,
    test_fraction: float | None,
    seed: int,
    source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, class-stratified split of one labelled pool into train/validation/test positions.

    The test part is split off first (``test_fraction`` of the pool), then ``val_fraction`` of
    the rest, as for the digits. A fraction of ``None`` means that split comes from elsewhere
    (its own folder or array): its index array is then empty.

    Args:
        labels: Class ids ``(n,)`` of the pool.
        val_fraction: Validation fraction of the non-test samples, or ``None``.
        test_fraction: Test fraction of the pool, or ``None``.
        seed: Seed of both splits.
        source: Where the pool comes from (a path), named in errors.

    Returns:
        ``(train, val, test)``: sorted int64 positions in the pool.

    Raises:
        ValueError: A stratified split is impossible (a class with a single sample, or fewer
            held-out samples than classes), in one line naming ``source``.
    """
    labels = np.asarray(labels)
    pool = np.arange(len(labels))
    parts: dict[str, np.ndarray] = {"val": pool[:0], "test": pool[:0]}
    for key, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction is None:
            continue
        try:
            kept, held = split_indices(len(pool), fraction, seed, labels=labels[pool])
        except ValueError as err:
            raise ValueError(
                f"{source}: cannot split off {key}_fraction={fraction} stratified by class from "
                f"{len(pool)} samples ({err}); add more samples per class, change {key}_fraction "
                f"or give a separate {key} split"
            ) from err
        parts[key] = pool[held]
        pool = pool[kept]
    return pool, parts["val"], parts["test"]
