"""MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN through torchvision's dataset classes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from lsa_train.data.base import LSADataModule
from lsa_train.data.splits import TransformSubset, split_indices


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about one torchvision dataset.

    Attributes:
        display: Human-readable name for messages.
        cls: The torchvision dataset class.
        num_classes: Number of classes.
        input_shape: ``(C, H, W)``.
        mean: Standard per-channel mean of the training images in ``[0, 1]`` units.
        std: Standard per-channel standard deviation (over all pixels of the training set).
        crop_padding: Zero padding of the training ``RandomCrop`` (0: no crop).
        flip: Random horizontal flips for training.
    """

    display: str
    cls: type
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False


#: Supported datasets. Augmentation (``augment=True``): random 32x32 crop of the 4-pixel padded
#: image plus horizontal flip for CIFAR, crop only for SVHN (flipped digits change meaning),
#: none for the MNIST family (the usual adversarial-training setting).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("MNIST", datasets.MNIST, 10, (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetSpec("Fashion-MNIST", datasets.FashionMNIST, 10, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": DatasetSpec(
        "CIFAR-10", datasets.CIFAR10, 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True
    ),
    "cifar100": DatasetSpec(
        "CIFAR-100", datasets.CIFAR100, 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True
    ),
    "svhn": DatasetSpec(
        "SVHN", datasets.SVHN, 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 4, False
    ),
}


class TorchvisionDataModule(LSADataModule):
    """A torchvision image dataset, inputs float32 ``(C, H, W)`` in ``[0, 1]`` (``ToTensor`` only).

    The validation split is a seeded random ``val_fraction`` of the official training set and
    the test split is the official test set. Both train and validation views share one loaded
    copy of the training data and differ only in their transform: the training view gets the
    augmentation (when ``augment=True``), the validation and test views never do.
    ``mean``/``std`` are the standard statistics of the dataset, for the model's normalization.

    Files are expected in torchvision's layout under ``data_dir``: ``MNIST/raw/*-ubyte``,
    ``FashionMNIST/raw/*-ubyte``, ``cifar-10-batches-py/``, ``cifar-100-python/``,
    ``train_32x32.mat`` and ``test_32x32.mat`` (SVHN). Nothing is downloaded unless
    ``download=True``.

    Args:
        name: One of ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``.
        data_dir: Root directory of the files (relative paths are relative to the working directory).
        download: Let :meth:`prepare_data` download missing files.
        augment: Training augmentation (see :data:`DATASETS`).
        val_fraction: Validation fraction of the official training set.
        **kwargs: Common arguments of :class:`~lsa_train.data.base.LSADataModule`.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike[str] = "data",
        download: bool = False,
        augment: bool = True,
        val_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        if name not in DATASETS:
            raise ValueError(f"unknown torchvision dataset {name!r}; choose one of {sorted(DATASETS)}")
        if not isinstance(augment, bool):  # bool('false') is True: a string would switch it on silently
            raise ValueError(f"augment must be true or false, got {augment!r}")
        self.spec = DATASETS[name]
        self.name = name
        self.num_classes = self.spec.num_classes
        self.input_shape = self.spec.input_shape
        self.mean = self.spec.mean
        self.std = self.spec.std
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)
        self.augment = bool(augment)
        self._class_names: tuple[str, ...] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The dataset's class names (torchvision's ``classes``; read from the files for CIFAR, so the ids
        until :meth:`setup`); SVHN's are its digits."""
        if self._class_names is not None:
            return self._class_names
        names = getattr(self.spec.cls, "classes", None)  # MNIST and Fashion-MNIST name them on the class
        if isinstance(names, list | tuple) and len(names) == self.num_classes:
            return tuple(str(n) for n in names)
        return super().class_names

    # -- files ------------------------------------------------------------------------------
    def expected_files(self) -> list[Path]:
        """The files torchvision needs for the train and test splits (existence only)."""
        cls = self.spec.cls
        root = self.data_dir
        if issubclass(cls, datasets.MNIST):
            raw = root / cls.__name__ / "raw"
            return [raw / os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        if issubclass(cls, datasets.CIFAR10):
            folder = root / cls.base_folder
            names = [entry[0] for entry in cls.train_list + cls.test_list] + [cls.meta["filename"]]
            return [folder / file for file in names]
        return [root / cls.split_list[split][1] for split in ("train", "test")]

    def check_available(self) -> None:
        """Raises early when the dataset files are missing (no download is attempted).

        Raises:
            FileNotFoundError: One line naming the dataset, the directory searched and how to fetch it.
        """
        missing = [path for path in self.expected_files() if not path.is_file()]
        if missing and not self._has_legacy_mnist():
            shown = ", ".join(str(path.relative_to(self.data_dir)) for path in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{self.spec.display} not found in '{self.data_dir.resolve()}' (missing {shown}{more}); "
                f"set data.download=true (download=True) to fetch it, or place the files there in torchvision's layout"
            )

    def _has_legacy_mnist(self) -> bool:
        """torchvision also accepts the old ``<Class>/processed/{training,test}.pt`` cache."""
        cls = self.spec.cls
        if not issubclass(cls, datasets.MNIST):
            return False
        processed = self.data_dir / cls.__name__ / "processed"
        return (processed / cls.training_file).is_file() and (processed / cls.test_file).is_file()

    def prepare_data(self) -> None:
        """Downloads the train and test files when ``download=True``; otherwise only checks they exist."""
        if not self.download:
            self.check_available()
            return
        for train in (True, False):
            self._open(train, download=True)

    # -- datasets ---------------------------------------------------------------------------
    def _open(self, train: bool, *, download: bool = False, transform: Any = None) -> Dataset:
        cls = self.spec.cls
        root = str(self.data_dir)
        try:
            if cls is datasets.SVHN:
                return cls(root, split="train" if train else "test", transform=transform, download=download)
            return cls(root, train=train, transform=transform, download=download)
        except RuntimeError as err:
            raise RuntimeError(
                f"{self.spec.display} in '{self.data_dir.resolve()}' could not be loaded ({err}); "
                "delete the files and fetch them again with data.download=true"
            ) from err

    def train_transform(self) -> transforms.Compose:
        """Augmentation (if enabled) followed by ``ToTensor`` (PIL image -> float32 ``(C, H, W)`` in [0, 1])."""
        steps: list[Any] = []
        if self.augment and self.spec.crop_padding:
            steps.append(transforms.RandomCrop(self.input_shape[1:], padding=self.spec.crop_padding))
        if self.augment and self.spec.flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps.append(transforms.ToTensor())
        return transforms.Compose(steps)

    @staticmethod
    def eval_transform() -> transforms.Compose:
        """``ToTensor`` only: float32 ``(C, H, W)`` in ``[0, 1]``."""
        return transforms.Compose([transforms.ToTensor()])

    def _build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        self.check_available()
        full_train = self._open(train=True)
        names = getattr(full_train, "classes", None)
        if isinstance(names, list | tuple) and len(names) == self.num_classes:
            self._class_names = tuple(str(n) for n in names)
        test = self._open(train=False, transform=self.eval_transform())
        train_idx, val_idx = split_indices(len(full_train), self.val_fraction, self.seed)  # type: ignore[arg-type]
        train = TransformSubset(full_train, train_idx, self.train_transform())
        val = TransformSubset(full_train, val_idx, self.eval_transform())
        return train, val, test
