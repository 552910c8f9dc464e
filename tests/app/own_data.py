"""A user's own files for the app tests: a module with a CNN class, an image folder, tensor files."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lsa_train.data import DigitsDataModule

#: The module a user would write: ``model=custom model._target_=user_nets.SmallCNN``.
USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class SmallCNN(nn.Module):
        \"\"\"A user's network: takes in_channels and num_classes, nothing about the data's size.\"\"\"

        def __init__(self, in_channels: int, num_classes: int, width: int = 8) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(x))  # functional activations: probes fall back to conv/linear outputs
            x = torch.relu(self.conv2(x))
            return self.head(x.mean(dim=(2, 3)))
    """
)


def write_user_module(folder: Path, name: str = "user_nets") -> Path:
    """``<folder>/<name>.py`` with :data:`USER_MODULE`; returns the folder (for PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(USER_MODULE)
    return folder


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 12) -> Path:
    """``<root>/train/c<k>/<i>.png``: grey images whose brightness pattern depends on the class."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        folder = root / "train" / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size)) + 60 * k
            pixels[: size // 2] += 40 * (k % 2)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


def write_tensor_file(path: Path, *, labels_offset: int = 0, scale: float = 1.0, drop_label: bool = False) -> Path:
    """An ``.npz`` of 40 vectors ``x`` (N, 4) in [0, 1] (times ``scale``) and labels ``y`` in [0, 2)."""
    rng = np.random.default_rng(1)
    x = rng.random((40, 4), dtype=np.float32) * scale
    y = np.arange(40) % 2 + labels_offset
    np.savez(path, x=x, y=y[:-1] if drop_label else y)
    return path


class NormalizedDigits(DigitsDataModule):
    """The digits fed normalized, ``(x - 0.5) / 0.25`` in [-2, 2]: the mistake the training range check names."""

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        x, y = super().transfer_batch_to_device(batch, device, dataloader_idx)
        return (x - 0.5) / 0.25, y
