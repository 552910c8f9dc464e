"""Two interleaving half circles (scikit-learn ``make_moons``), the paper's toy task for model A."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.datasets import make_moons
from torch.utils.data import Dataset, TensorDataset

from lsa_train.data.base import LSADataModule
from lsa_train.data.splits import split_indices


class MoonsDataModule(LSADataModule):
    """Two-moons binary classification with 2-D features rescaled to ``[0, 1]``.

    ``make_moons(n_samples + n_test, noise, random_state=seed)`` is drawn once; a stratified
    seeded split takes ``n_test`` test points, and ``val_fraction`` of the remaining
    ``n_samples`` become the validation set. Each feature is min/max rescaled with the range of
    the *training* split and the same map is applied to all splits, then clipped to ``[0, 1]``.
    Inputs are float32 ``(N, 2)``, labels int64 in ``{0, 1}``; ``mean``/``std`` are ``None``
    (model A takes the raw ``[0, 1]`` features).

    The LSA paper does not state its noise level; ``noise=0.1`` (the default) gives two clearly
    separated moons, ``0.2`` a harder task with overlapping classes.

    Args:
        n_samples: Train + validation points.
        n_test: Test points.
        noise: Standard deviation of the Gaussian noise added by ``make_moons`` (raw units,
            before rescaling; the moons span about 3 x 1.5).
        val_fraction: Validation fraction of ``n_samples``.
        **kwargs: Common arguments of :class:`~lsa_train.data.base.LSADataModule`.

    Attributes:
        feature_min, feature_max: ``(2,)`` arrays of the train-split range used for rescaling
            (after :meth:`setup`); ``x01 = (x_raw - feature_min) / (feature_max - feature_min)``.
    """

    name = "moons"
    num_classes = 2
    input_shape = (2,)
    mean = None
    std = None

    def __init__(
        self, n_samples: int = 2000, n_test: int = 1000, noise: float = 0.1, val_fraction: float = 0.2, **kwargs: Any
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 4:
            raise ValueError(f"n_samples must be an integer >= 4, got {n_samples!r}")
        if isinstance(n_test, bool) or int(n_test) != n_test or n_test < 2:
            raise ValueError(f"n_test must be an integer >= 2, got {n_test!r}")
        if not float(noise) >= 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.n_samples = int(n_samples)
        self.n_test = int(n_test)
        self.noise = float(noise)
        self.feature_min: np.ndarray | None = None
        self.feature_max: np.ndarray | None = None

    def _build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        x, y = make_moons(self.n_samples + self.n_test, noise=self.noise, random_state=self.seed)
        pool, test = split_indices(len(y), self.n_test, self.seed, labels=y)
        train_pos, val_pos = split_indices(len(pool), self.val_fraction, self.seed, labels=y[pool])
        train, val = pool[train_pos], pool[val_pos]
        lo, hi = x[train].min(axis=0), x[train].max(axis=0)
        self.feature_min, self.feature_max = lo, hi
        scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
        inputs = torch.as_tensor(scaled, dtype=torch.float32)
        labels = torch.as_tensor(y, dtype=torch.int64)
        return tuple(TensorDataset(inputs[idx], labels[idx]) for idx in (train, val, test))  # type: ignore[return-value]
