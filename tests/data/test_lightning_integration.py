"""The datamodules plug into a Lightning ``Trainer`` and into ``create_model``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lsa_train.data import (
    DigitsDataModule,
    ImageFolderDataModule,
    LSADataModule,
    MoonsDataModule,
    TensorDataModule,
)
from lsa_train.models import create_model


class _Classifier(L.LightningModule):
    def __init__(self, dm: LSADataModule, name: str) -> None:
        super().__init__()
        self.net = create_model(name, **dm.model_kwargs())
        self.seen: dict[str, int] = {"train": 0, "val": 0, "test": 0}

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        self.seen[stage] += len(y)
        return F.cross_entropy(self.net(x), y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


def test_fit_and_test_on_moons(tmp_path: Path) -> None:
    dm = MoonsDataModule(n_samples=400, n_test=100, batch_size=32)
    module = _Classifier(dm, "mlp_a")
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert module.seen == {"train": 96, "val": 80, "test": 100}


def test_fit_on_digits_with_normalization_inside_the_model(tmp_path: Path) -> None:
    dm = DigitsDataModule(batch_size=64, eval_batch_size=360)
    module = _Classifier(dm, "cnn_b")
    assert type(module.net).__name__ == "NormalizedModel"
    _trainer(tmp_path).fit(module, datamodule=dm)
    assert module.seen["train"] == 192 and module.seen["val"] == 360


def _fast_dev_run(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        fast_dev_run=True, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )


def test_fit_and_test_on_a_user_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        folder = tmp_path / "img" / "train" / name
        folder.mkdir(parents=True)
        for i in range(6):  # RGB images of two sizes: resized and center-cropped to 16x16
            size = (12, 12, 3) if i % 2 else (20, 14, 3)
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8), "RGB").save(folder / f"{i}.png")
    dm = ImageFolderDataModule(tmp_path / "img", input_size=16, val_fraction=0.25, test_fraction=0.2, batch_size=4)
    module = _Classifier(dm, "cnn_b")
    assert type(module.net).__name__ == "NormalizedModel" and dm.input_shape == (3, 16, 16)
    trainer = _fast_dev_run(tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert module.seen == {"train": 4, "val": 4, "test": 4}


def test_fit_on_a_user_tensor_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(40, 6, generator=g), "y": torch.arange(40) % 2}, tmp_path / "vectors.pt")

    dm = TensorDataModule(tmp_path / "vectors.pt", batch_size=8)
    module = _Classifier(dm, "mlp_a")
    trainer = _fast_dev_run(tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert module.seen == {"train": 8, "val": 4, "test": 8}


def test_batchnorm_model_trains_through_a_remainder_of_one_sample(tmp_path: Path) -> None:
    # 1077 training digits with batch_size 4 leave one sample; resnet18 ends in 1x1 feature maps
    # at 8x8 inputs, where BatchNorm in train mode raises on a batch of one
    dm = DigitsDataModule(batch_size=4, eval_batch_size=360)
    module = _Classifier(dm, "resnet18")
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1.0, limit_val_batches=0, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    dm.setup()
    dm.train_set = torch.utils.data.Subset(dm.train_set, range(9))  # same remainder, 3 steps
    trainer.fit(module, datamodule=dm)
    assert module.seen["train"] == 8
