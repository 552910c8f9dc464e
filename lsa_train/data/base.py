"""Common base of the LightningDataModules: split bookkeeping, loaders, analysis subset."""

from __future__ import annotations

import logging
import math
import numbers
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset

from lsa_train.data.seeding import SeededSamples, SeededShuffleSampler

log = logging.getLogger(__name__)

#: ``num_workers="auto"``: at most this many loader processes.
MAX_AUTO_WORKERS = 4


def log_on_rank_zero(logger: logging.Logger, message: str, *args: Any) -> None:
    """``logger.info(message, *args)`` on the global rank-0 process only (one line per run under DDP)."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        logger.info(message, *args)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_num_workers(cpus: int | None = None) -> int:
    """``num_workers="auto"``: ``min(4, cpus - 1)`` loader processes, leaving one core to the training
    process (0, loading in the training process, on a 1-core machine)."""
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def resolve_loader_settings(num_workers: int | str, pin_memory: bool | str) -> tuple[int, bool]:
    """``num_workers`` and ``pin_memory`` with ``"auto"`` resolved for this machine.

    ``num_workers="auto"`` is :func:`auto_num_workers`; ``pin_memory="auto"`` pins only when CUDA is
    available (pinned memory speeds up host-to-GPU copies and is useless, with a warning, without a GPU).

    Raises:
        ValueError: Anything but an integer ``>= 0`` or ``"auto"`` for ``num_workers``, or a bool or
            ``"auto"`` for ``pin_memory``.
    """
    if isinstance(num_workers, str) and num_workers.lower() == "auto":
        workers = auto_num_workers()
    elif isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got {num_workers!r}")
    else:
        workers = int(num_workers)
    if isinstance(pin_memory, str) and pin_memory.lower() == "auto":
        pin = torch.cuda.is_available()
    elif isinstance(pin_memory, bool):
        pin = pin_memory
    else:
        raise ValueError(f"pin_memory must be true, false or 'auto', got {pin_memory!r}")
    return workers, pin


class LSADataModule(L.LightningDataModule):
    """Base datamodule with train/val/test splits of inputs in ``[0, 1]``.

    Subclasses set the class facts in ``__init__`` (they are known before :meth:`setup`) and
    implement :meth:`_build_splits`.

    Attributes:
        name: Dataset name, e.g. ``"cifar10"``.
        num_classes: Number of classes ``K``; labels are int64 in ``[0, K)``.
        input_shape: Per-sample input shape: ``(D,)`` for vectors, ``(C, H, W)`` for images.
        mean: Per-channel mean of the inputs for the model's normalization layer, or ``None``.
        std: Per-channel standard deviation, or ``None`` (then the model takes raw ``[0, 1]`` inputs).
        train_set, val_set, test_set: The splits, available after :meth:`setup`.

    Args:
        batch_size: Training batch size.
        num_workers: DataLoader worker processes (0: load in the main process), or ``"auto"``:
            ``min(4, CPU cores - 1)`` (:func:`auto_num_workers`).
        pin_memory: Passed to the DataLoaders; ``"auto"``: only when CUDA is available.
        persistent_workers: Keep workers alive between epochs; only effective if ``num_workers > 0``.
            With workers, persistent or not, training samples are augmented from per-sample seeds
            (:mod:`lsa_train.data.seeding`): resuming from a checkpoint is exact.
        val_fraction: Fraction of the training pool held out for validation, in ``(0, 1)``;
            the split is seeded by ``seed`` (validation size ``ceil(val_fraction * pool)``).
        seed: Seed of the splits, of the training shuffle order and of :meth:`analysis_subset`.
        eval_batch_size: Batch size of the validation/test loaders (default: ``batch_size``).
        drop_last: Drop the last incomplete training batch. Without it, a last batch of exactly
            one sample (per process) is still dropped, since BatchNorm cannot train on one sample.

    Raises:
        ValueError: A bad argument (one line, naming the value).
    """

    name: str = ""
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """``class_names[k]`` names label ``k`` (feature-map titles, reports): the ids ``"0"`` .. ``"K-1"``
        unless the data names its classes (image folders, the torchvision datasets)."""
        return tuple(str(k) for k in range(self.num_classes))

    def __init__(
        self,
        *,
        batch_size: int = 128,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        persistent_workers: bool = False,
        val_fraction: float = 0.1,
        seed: int = 313,
        eval_batch_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("batch_size", batch_size)
        if eval_batch_size is not None:
            _check_positive_int("eval_batch_size", eval_batch_size)
        workers, pin = resolve_loader_settings(num_workers, pin_memory)
        if "auto" in (str(num_workers).lower(), str(pin_memory).lower()):
            log_on_rank_zero(log, "data loaders: %d worker processes (num_workers=%s, %d CPU cores), pin_memory=%s "
                             "(pin_memory=%s, CUDA %s)", workers, num_workers, available_cpus(), pin, pin_memory,
                             "available" if torch.cuda.is_available() else "not available")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else int(batch_size)
        self.num_workers = workers
        self.pin_memory = pin
        self.persistent_workers = bool(persistent_workers)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._train_generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None

    # -- splits ---------------------------------------------------------------------------
    def _build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        """Returns ``(train, val, test)`` datasets of ``(x, y)`` pairs; ``x`` float32 in ``[0, 1]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build_splits")

    def setup(self, stage: str | None = None) -> None:
        """Builds all three splits once (later calls, for any stage, are no-ops).

        Raises:
            ValueError: ``drop_last=True`` with a batch larger than the training set.
        """
        if self.train_set is not None:
            return
        train, val, test = self._build_splits()
        n_train = len(train)  # type: ignore[arg-type]
        if self.drop_last and self.batch_size > n_train:
            raise ValueError(
                f"batch_size {self.batch_size} larger than the training set ({n_train} samples) "
                "with drop_last=True would give no batches"
            )
        self.train_set, self.val_set, self.test_set = train, val, test
        self._train_generator = torch.Generator().manual_seed(self.seed)
        if self._pending_generator_state is not None:
            self._train_generator.set_state(self._pending_generator_state)
            self._pending_generator_state = None

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The training shuffle generator's state (saved in Lightning checkpoints).

        Each epoch's shuffle order and loader seed (with workers: the epoch's augmentation seed, see
        :mod:`lsa_train.data.seeding`) are drawn from this generator, so a resumed run must continue from
        its state at the checkpoint, not from a freshly seeded one.
        """
        if self._train_generator is None:
            return {}
        return {"train_generator": self._train_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (kept until :meth:`setup` if the splits are not built yet)."""
        state = state_dict.get("train_generator")
        if state is None:
            return
        if self._train_generator is None:
            self._pending_generator_state = state
        else:
            self._train_generator.set_state(state)

    def _require_setup(self) -> None:
        if self.train_set is None:
            self.setup()

    # -- loaders --------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        """A DataLoader of ``dataset``; for training, shuffled by the saved shuffle generator.

        With workers, the training samples are augmented from per-sample seeds that the shuffle generator
        hands out (:mod:`lsa_train.data.seeding`), so a resumed run is exact with persistent workers too.
        Every loader with workers then draws its workers' base seed (used for nothing) from a generator of
        its own: a persistent loader draws it once, at its first epoch, which a resumed run replays at
        another epoch; drawn from the global generator, it would shift the training's random numbers.
        """
        if dataset is None:
            raise ValueError(f"{type(self).__name__}: the splits are not built; call setup() first")
        loaded, sampler, generator = dataset, None, self._train_generator if train else None
        if self.num_workers > 0:
            generator = torch.Generator().manual_seed(self.seed)
            if train:
                assert self._train_generator is not None
                loaded = SeededSamples(dataset)
                sampler = SeededShuffleSampler(len(dataset), self._train_generator)  # type: ignore[arg-type]
        return DataLoader(
            loaded,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=(self.drop_last or self._last_batch_is_single(dataset)) if train else False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            generator=generator,
        )

    def _last_batch_is_single(self, dataset: Dataset) -> bool:
        """Whether the last training batch of each process would hold one sample.

        BatchNorm in train mode cannot normalize one sample (PyTorch raises for 1x1 feature maps,
        e.g. ResNet-18 on 8x8 digits), so that batch is dropped: one sample per epoch goes unseen,
        a different one each epoch since the order is shuffled. Under DDP each process gets
        ``ceil(len / world_size)`` samples (Lightning's ``DistributedSampler`` pads).
        """
        world_size = int(self.trainer.world_size) if self.trainer is not None else 1
        per_process = math.ceil(len(dataset) / world_size)  # type: ignore[arg-type]
        single = per_process > 1 and per_process % self.batch_size == 1
        if single:
            rank_zero_info(
                f"{type(self).__name__}: dropping the last training batch of 1 sample "
                f"({per_process} % batch_size {self.batch_size} == 1): BatchNorm cannot train on one sample"
            )
        return single

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x, y)``; the order is seeded by ``seed``."""
        self._require_setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order, no augmentation."""
        self._require_setup()
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order, no augmentation."""
        self._require_setup()
        return self._loader(self.test_set, train=False)

    # -- helpers for the rest of the toolkit ------------------------------------------------
    def analysis_subset(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed, seeded subset of ``n`` validation samples (no augmentation), as tensors.

        The selection depends only on ``seed`` and the validation split; a smaller ``n`` gives a
        prefix of a larger one.

        Args:
            n: Number of samples, ``1 <= n <= len(val_set)``.

        Returns:
            ``x`` float32 ``(n, *input_shape)`` in ``[0, 1]`` and ``y`` int64 ``(n,)``.
        """
        self._require_setup()
        assert self.val_set is not None
        n_val = len(self.val_set)  # type: ignore[arg-type]
        if isinstance(n, bool) or int(n) != n or not 1 <= n <= n_val:
            raise ValueError(f"analysis_subset needs 1 <= n <= {n_val} (validation set size), got {n!r}")
        generator = torch.Generator().manual_seed(self.seed + 1)
        indices = torch.randperm(n_val, generator=generator)[: int(n)].tolist()
        pairs = [self.val_set[i] for i in indices]
        x = torch.stack([torch.as_tensor(item[0], dtype=torch.float32) for item in pairs])
        y = torch.as_tensor([int(item[1]) for item in pairs], dtype=torch.int64)
        return x, y

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`lsa_train.models.create_model` matching this data.

        Returns:
            ``num_classes``, ``in_channels``, ``input_size`` (``(H, W)``; ``None`` for vectors,
            whose length ``D`` is then passed as ``in_channels``), ``mean`` and ``std``.
        """
        vector = len(self.input_shape) == 1
        return {
            "num_classes": self.num_classes,
            "in_channels": self.input_shape[0],
            "input_size": None if vector else tuple(self.input_shape[1:]),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
