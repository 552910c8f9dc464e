"""Per-sample seeds of the training augmentation, so that a resumed run with data-loader workers is exact.

A worker process draws its augmentation (random crops, flips) from its own global generators, which
PyTorch seeds once, when the workers start, from a base seed the loader draws then. With
``persistent_workers`` the workers keep those generators across epochs, a state no checkpoint holds:
a run resumed at epoch ``e`` starts fresh workers and augments epoch ``e`` differently (and its loader
draws the base seed from the shuffle generator once more, so even the order changes). Re-seeding per
epoch would not be enough either: which worker loads which batch is fixed, but what a worker drew
depends on every sample it loaded before.

So every sample is augmented from a seed of its own: the training sampler draws one seed per epoch
from the data module's shuffle generator (saved in checkpoints, see
:meth:`lsa_train.data.LSADataModule.state_dict`) and hands each index over with it; the dataset
wrapper seeds the worker's torch, ``random`` and NumPy generators from ``(epoch seed, index)`` before
loading the sample. The augmentation then depends on neither the worker count, nor persistence, nor
an interruption. In the main process (``num_workers=0``) the loader keeps the global generators,
whose state :class:`~lsa_train.training.RNGStateCallback` saves, and this wrapping is not used.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

#: A training sample's key: ``(index into the dataset, the epoch's augmentation seed)``.
SampleKey = tuple[int, int]


def seed_sample(epoch_seed: int, index: int) -> None:
    """Seeds this process's torch, ``random`` and NumPy global generators from ``(epoch_seed, index)``."""
    words = np.random.SeedSequence([int(epoch_seed), int(index)]).generate_state(4)  # 4 x uint32
    torch.manual_seed((int(words[0]) << 32) | int(words[1]))
    random.seed((int(words[2]) << 32) | int(words[3]))
    np.random.seed(words)


class SeededShuffleSampler(Sampler[SampleKey]):
    """A shuffled pass over ``num_samples`` indices, each paired with the epoch's augmentation seed.

    Each ``iter()`` (one per epoch) draws the epoch's seed, then the permutation, from ``generator``:
    the same two draws every epoch, whether the loader's workers persist or not.

    Args:
        num_samples: Size of the training set.
        generator: The shuffle generator (its state travels in checkpoints).
    """

    def __init__(self, num_samples: int, generator: torch.Generator) -> None:
        self.num_samples = int(num_samples)
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[SampleKey]:
        epoch_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        for index in torch.randperm(self.num_samples, generator=self.generator).tolist():
            yield index, epoch_seed


class SeededSamples(Dataset):
    """``dataset[index]`` for a key ``(index, epoch_seed)`` of :class:`SeededShuffleSampler`, loaded after
    :func:`seed_sample` (a plain integer index is loaded as it is, without seeding).

    Only for loader workers: seeding the global generators of the main process would reset the
    training's own randomness (attack random starts, dropout) at every sample.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey | int) -> Any:
        if isinstance(key, tuple):
            index, epoch_seed = key
            seed_sample(epoch_seed, index)
            return self.dataset[index]
        return self.dataset[key]
