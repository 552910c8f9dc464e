"""Seeded stratified subsets: which ``n`` of a split's samples an evaluation or analysis looks at.

"The first ``n`` samples" of a split is a biased sample whenever the split is ordered (by class, by
source folder, by acquisition time). Here every subset has the split's class proportions, within one
sample per class, is fixed by its seed, and the subsets of one seed are nested: the ``n = 200`` subset
lies inside the ``n = 500`` one. So an evaluation whose attacks run on subsets of different sizes
(AutoAttack on 200, Square on 500 of the evaluated samples) compares them on the same samples.

The order is Tijdeman's solution of the chairman assignment problem (R. Tijdeman, "The chairman
assignment problem", Discrete Mathematics 32, 1980): the ``k``-th sample comes from the class whose next
sample is due first, ``(taken_c + 1 - s) / p_c`` with ``s = 1 / (2 C - 2)``, among the classes at least
``s`` behind their share ``k p_c``; ties go by a seeded class priority, and within a class the samples come
in a seeded random order. Every prefix then holds ``k p_c`` samples of class ``c`` within ``1 - s``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def stratified_order(labels: Tensor | Sequence[int], seed: int, n: int | None = None) -> Tensor:
    """The first ``n`` positions (all if ``None``) of a seeded, class-stratified order of ``labels``.

    Args:
        labels: ``(N,)`` integer class labels, in data order.
        seed: Seed of the order (the same seed and labels give the same order).
        n: How many positions to return; ``None`` or ``>= N`` for all ``N``.

    Returns:
        ``(min(n, N),)`` int64 positions into ``labels``, in selection order: every prefix of length ``k``
        has ``k * N_c / N`` samples of each class ``c``, within one (strictly less than one).
    """
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
    total = int(y.shape[0])
    count = total if n is None else max(0, min(int(n), total))
    rng = np.random.default_rng(int(seed))
    classes, inverse = np.unique(y, return_inverse=True)
    members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    share = sizes / max(total, 1)
    slack = 1.0 / (2 * (len(classes) - 1)) if len(classes) > 1 else 0.0
    priority = rng.permutation(len(classes))  # seeded tie-break among equal deadlines
    taken = np.zeros(len(classes), dtype=np.int64)
    order = np.empty(count, dtype=np.int64)
    for k in range(1, count + 1):
        left = taken < sizes
        eligible = left & (k * share - taken >= slack - 1e-12)
        if not eligible.any():  # not reached by Tijdeman's theorem; kept so that the loop cannot stall
            eligible = left
        deadline = np.where(eligible, (taken + 1 - slack) / np.where(share > 0, share, 1.0), np.inf)
        due = np.flatnonzero(deadline <= deadline.min() + 1e-12)
        c = int(due[np.argmax(priority[due])])
        order[k - 1] = members[c][taken[c]]
        taken[c] += 1
    return torch.from_numpy(order)


def stratified_subset(labels: Tensor | Sequence[int], n: int | None, seed: int) -> Tensor:
    """The positions of a seeded stratified subset of ``n`` samples, sorted (data order).

    ``None`` or ``n >= N`` gives every position. Subsets of one seed are nested (see the module doc).
    """
    return stratified_order(labels, seed, n).sort().values


def describe_subset(n: int, total: int, seed: int) -> str:
    """``"N of M samples, stratified, seed S"``, or ``"all M samples"`` when nothing was left out."""
    if n >= total:
        return f"all {total} samples"
    return f"{n} of {total} samples, stratified, seed {seed}"


@dataclass(frozen=True)
class Selection:
    """A seeded stratified subset of a stream of batches (:func:`select_stratified`).

    Attributes:
        batches: The batches of the subset: a :class:`SelectedBatches`, or the given batches themselves when
            nothing was left out.
        positions: ``(n,)`` int64 positions of the subset's samples in the data, sorted.
        description: ``"N of M samples, stratified, seed S"`` (:func:`describe_subset`).
    """

    batches: Any
    positions: Tensor
    description: str

    @property
    def left_out(self) -> bool:
        """Whether some samples were left out (``batches`` is then a :class:`SelectedBatches`)."""
        return isinstance(self.batches, SelectedBatches)


def select_stratified(batches: Any, labels: Tensor | Sequence[int], n: int | None, seed: int) -> Selection:
    """The seeded stratified subset of ``n`` samples of ``batches`` (all if ``None`` or ``n >= N``).

    Args:
        batches: Re-iterable ``(x, y, ...)`` batches in a fixed order.
        labels: ``(N,)`` labels of their samples in data order (:func:`batch_labels`).
        n: Subset size.
        seed: Seed of the subset (:func:`stratified_subset`; subsets of one seed are nested).
    """
    chosen = stratified_subset(labels, n, seed)
    total = int(torch.as_tensor(labels).numel())
    selected = SelectedBatches(batches, chosen) if chosen.numel() < total else batches
    return Selection(selected, chosen, describe_subset(int(chosen.numel()), total, seed))


class SelectedBatches:
    """Re-iterable ``(x, y)`` batches of only the samples at ``positions`` of ``batches`` (in data order).

    The data is streamed as it comes: batches keep their size up to the samples left out, so memory stays
    bounded by one batch. Extra items after ``y`` are dropped.

    Args:
        batches: A ``DataLoader`` or re-iterable of ``(x, y, ...)`` batches, in a fixed order.
        positions: Positions (0-based over all samples of ``batches``) to keep.
    """

    def __init__(self, batches: Any, positions: Tensor | Sequence[int]) -> None:
        self.batches = batches
        keep = torch.as_tensor(positions, dtype=torch.long).reshape(-1).unique()
        self.positions = keep
        self._keep = set(keep.tolist())

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        seen = 0
        for batch in self.batches:
            x, y = batch[0], batch[1]
            size = int(y.shape[0])
            picked = [i for i in range(size) if seen + i in self._keep]
            seen += size
            if not picked:
                continue
            index = torch.tensor(picked, dtype=torch.long)
            yield x[index.to(x.device)], y[index.to(y.device)]


def batch_labels(batches: Any) -> Tensor:
    """``(N,)`` int64 labels of every sample of ``batches``, in data order (one pass over the data)."""
    labels = [torch.as_tensor(batch[1]).reshape(-1).long().cpu() for batch in batches]
    if not labels:
        raise ValueError("the data yielded no samples")
    return torch.cat(labels)
