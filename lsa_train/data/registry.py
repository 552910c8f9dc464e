"""``create_datamodule(name, **kwargs)``: one entry point for every supported dataset."""

from __future__ import annotations

from typing import Any

from lsa_train.data.base import LSADataModule
from lsa_train.data.digits import DigitsDataModule
from lsa_train.data.imagefolder import ImageFolderDataModule
from lsa_train.data.moons import MoonsDataModule
from lsa_train.data.tensors import TensorDataModule
from lsa_train.data.torchvision_data import DATASETS, TorchvisionDataModule

#: Names accepted by :func:`create_datamodule`.
DATAMODULE_NAMES: tuple[str, ...] = ("moons", "digits", *DATASETS, "imagefolder", "tensors")


def create_datamodule(name: str, **kwargs: Any) -> LSADataModule:
    """Builds the datamodule for ``name``.

    Args:
        name: ``moons``, ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``,
            ``imagefolder`` (the user's images, ``root=...``) or ``tensors`` (the user's arrays, ``path=...``).
        **kwargs: Arguments of :class:`MoonsDataModule`, :class:`DigitsDataModule`,
            :class:`TorchvisionDataModule`, :class:`ImageFolderDataModule` or :class:`TensorDataModule`
            (plus the common ones of ``LSADataModule``).

    Raises:
        ValueError: Unknown name (one line listing the choices).
    """
    if name == "moons":
        return MoonsDataModule(**kwargs)
    if name == "digits":
        return DigitsDataModule(**kwargs)
    if name in DATASETS:
        return TorchvisionDataModule(name, **kwargs)
    if name == "imagefolder":
        return ImageFolderDataModule(**kwargs)
    if name == "tensors":
        return TensorDataModule(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATAMODULE_NAMES)}")
