"""scikit-learn's bundled 8x8 handwritten digits (no download), optionally resized / made RGB."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, TensorDataset

from lsa_train.data.base import LSADataModule
from lsa_train.data.splits import split_indices


class DigitsDataModule(LSADataModule):
    """The 1797 UCI 8x8 digits (``sklearn.datasets.load_digits``), 10 classes.

    Pixel values ``0..16`` are divided by 16 to ``[0, 1]``; images are ``(N, 1, 8, 8)`` float32.
    Splits are stratified and seeded: ``test_fraction`` of all samples for test, then
    ``val_fraction`` of the rest for validation; the defaults (0.2, 0.25) give 60/20/20
    (1077/360/360 samples). ``mean``/``std`` are the per-channel statistics of the final
    (resized, replicated) training images, for the model's normalization layer.

    Args:
        input_size: Side of the images in pixels. Other than 8, images are resized with bilinear
            interpolation (``align_corners=False``, no antialiasing) and clipped to ``[0, 1]``, e.g.
            32 for CIFAR-style ResNets.
        channels: 1 (grey) or 3 (the grey channel replicated, for RGB models).
        test_fraction: Test fraction of all samples, in ``(0, 1)``.
        val_fraction: Validation fraction of the non-test samples.
        **kwargs: Common arguments of :class:`~lsa_train.data.base.LSADataModule`.

    The data is loaded and split in ``__init__`` (it is tiny and bundled with scikit-learn), so
    that ``mean``/``std`` are known before :meth:`setup`.
    """

    name = "digits"
    num_classes = 10

    def __init__(
        self,
        input_size: int = 8,
        channels: int = 1,
        test_fraction: float = 0.2,
        val_fraction: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        if isinstance(input_size, bool) or int(input_size) != input_size or input_size < 1:
            raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.input_size = int(input_size)
        self.channels = int(channels)
        self.test_fraction = float(test_fraction)
        self.input_shape = (self.channels, self.input_size, self.input_size)
        self._images, self._labels, self._split = self._load()
        train = self._images[self._split[0]]
        self.mean = tuple(train.mean(dim=(0, 2, 3)).tolist())
        self.std = tuple(train.std(dim=(0, 2, 3), unbiased=False).tolist())

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, Any, Any]]:
        """Images ``(N, C, S, S)`` float32 in ``[0, 1]``, labels ``(N,)`` int64, (train, val, test) indices."""
        x, y = load_digits(return_X_y=True)
        images = torch.as_tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        if self.input_size != 8:
            size = (self.input_size, self.input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        if self.channels == 3:
            images = images.repeat(1, 3, 1, 1)
        labels = torch.as_tensor(y, dtype=torch.int64)
        pool, test = split_indices(len(y), self.test_fraction, self.seed, labels=y)
        train_pos, val_pos = split_indices(len(pool), self.val_fraction, self.seed, labels=y[pool])
        return images, labels, (pool[train_pos], pool[val_pos], test)

    def _build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        return tuple(  # type: ignore[return-value]
            TensorDataset(self._images[idx], self._labels[idx]) for idx in self._split
        )
