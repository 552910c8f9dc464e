"""LightningDataModules yielding inputs in ``[0, 1]`` (normalization statistics exposed for the model)."""

from lsa_train.data.base import LSADataModule
from lsa_train.data.digits import DigitsDataModule
from lsa_train.data.imagefolder import ImageFolderDataModule
from lsa_train.data.moons import MoonsDataModule
from lsa_train.data.registry import DATAMODULE_NAMES, create_datamodule
from lsa_train.data.tensors import TensorDataModule
from lsa_train.data.torchvision_data import DATASETS, TorchvisionDataModule

__all__ = [
    "DATAMODULE_NAMES",
    "DATASETS",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "LSADataModule",
    "MoonsDataModule",
    "TensorDataModule",
    "TorchvisionDataModule",
    "create_datamodule",
]
