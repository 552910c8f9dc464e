"""``TorchvisionDataModule`` on tiny stand-in files written in torchvision's on-disk formats.

Nothing is downloaded: each test writes a few random images in the exact layout torchvision
0.29 reads (idx-ubyte for MNIST, pickled batches for CIFAR, ``.mat`` for SVHN) under ``tmp_path``.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.svhn
from torchvision import transforms

from lsa_train.data import TorchvisionDataModule

N_TRAIN, N_TEST = 40, 20


# -- writers of torchvision's formats -----------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: big-endian magic ``0x00 0x00 <type 0x08 = uint8> <ndim>``, dims as >i4, then bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, folder: str = "MNIST", seed: int = 0) -> None:
    """``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` as MNIST.resources names them."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def write_fake_cifar(root: Path, hundred: bool = False, seed: int = 0) -> None:
    """CIFAR python pickles: dicts with ``data`` uint8 ``(n, 3072)`` (RGB planes) and the label lists."""
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)

    def dump(name: str, n: int, offset: int) -> None:
        labels = [(offset + i) % classes for i in range(n)]
        entry: dict[str, object] = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        entry.update(
            {"fine_labels": labels, "coarse_labels": [x % 20 for x in labels]} if hundred else {"labels": labels}
        )
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)

    if hundred:
        dump("train", N_TRAIN, 0)
        dump("test", N_TEST, 0)
        meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    else:
        per_batch = N_TRAIN // 5
        for i in range(5):
            dump(f"data_batch_{i + 1}", per_batch, i * per_batch)
        dump("test_batch", N_TEST, 0)
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def write_fake_svhn(root: Path, seed: int = 0) -> None:
    """``train_32x32.mat`` / ``test_32x32.mat``: ``X`` uint8 ``(32, 32, 3, N)``, ``y`` ``(N, 1)`` in 1..10."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


WRITERS = {
    "mnist": lambda root: write_fake_mnist(root),
    "fashion_mnist": lambda root: write_fake_mnist(root, folder="FashionMNIST"),
    "cifar10": lambda root: write_fake_cifar(root),
    "cifar100": lambda root: write_fake_cifar(root, hundred=True),
    "svhn": lambda root: write_fake_svhn(root),
}
SHAPES = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept our stand-in CIFAR/SVHN files.

    torchvision checks the md5 of the official CIFAR/SVHN files (``check_integrity`` with a
    checksum); that guards the real download, while our fixture files are small stand-ins in
    the same format, so for them only existence is checked. Production code is unchanged, see
    ``test_checksums_still_apply_without_the_patch``.
    """

    def exists(fpath: str | os.PathLike[str], md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("skip_md5")
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_loads_fake_files(name: str, tmp_path: Path) -> None:
    WRITERS[name](tmp_path)
    dm = TorchvisionDataModule(name, data_dir=tmp_path, val_fraction=0.25, batch_size=8, seed=1)
    assert dm.input_shape == SHAPES[name]
    assert len(dm.mean) == len(dm.std) == SHAPES[name][0]
    dm.check_available()
    dm.prepare_data()  # download=False: only checks
    dm.setup("fit")
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [30, 10, N_TEST]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, *SHAPES[name]) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert y.dtype == torch.int64 and y.min() >= 0 and y.max() < dm.num_classes
    x, y = dm.analysis_subset(5)
    assert x.shape == (5, *SHAPES[name]) and y.shape == (5,)


@pytest.mark.usefixtures("skip_md5")
def test_svhn_labels_are_zero_based(tmp_path: Path) -> None:
    write_fake_svhn(tmp_path)
    dm = TorchvisionDataModule("svhn", data_dir=tmp_path, val_fraction=0.25)
    dm.setup()
    labels = sorted({int(dm.test_set[i][1]) for i in range(len(dm.test_set))})
    assert labels == list(range(10))


@pytest.mark.usefixtures("skip_md5")
def test_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)

    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = TorchvisionDataModule("cifar10", data_dir=tmp_path, val_fraction=0.25, seed=seed)
        dm.setup()
        return dm.train_set.indices, dm.val_set.indices  # type: ignore[union-attr]

    train, val = split(3)
    assert not set(train) & set(val) and len(set(train) | set(val)) == N_TRAIN
    assert split(3) == (train, val)
    assert split(4)[1] != val


@pytest.mark.usefixtures("skip_md5")
def test_augmentation_on_train_only(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    dm = TorchvisionDataModule("cifar10", data_dir=tmp_path, val_fraction=0.25)
    dm.setup()
    train_steps = [type(t) for t in dm.train_set.transform.transforms]  # type: ignore[union-attr]
    assert train_steps == [transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.ToTensor]
    assert [type(t) for t in dm.val_set.transform.transforms] == [transforms.ToTensor]  # type: ignore[union-attr]
    assert [type(t) for t in dm.test_set.transform.transforms] == [transforms.ToTensor]  # type: ignore[union-attr]

    # both views share one loaded copy; compare a training view against the plain image
    base = dm.train_set.dataset  # type: ignore[union-attr]
    index = dm.train_set.indices[0]  # type: ignore[union-attr]
    plain = transforms.ToTensor()(base[index][0])
    torch.manual_seed(0)
    draws = [dm.train_set[0][0] for _ in range(8)]
    assert any(not torch.equal(d, plain) for d in draws)
    val_index = dm.val_set.indices[0]  # type: ignore[union-attr]
    assert torch.equal(dm.val_set[0][0], transforms.ToTensor()(base[val_index][0]))
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])

    no_aug = TorchvisionDataModule("cifar10", data_dir=tmp_path, val_fraction=0.25, augment=False)
    no_aug.setup()
    assert torch.equal(no_aug.train_set[0][0], plain)


def test_svhn_is_not_flipped_and_mnist_not_augmented() -> None:
    svhn = TorchvisionDataModule("svhn").train_transform().transforms
    assert [type(t) for t in svhn] == [transforms.RandomCrop, transforms.ToTensor]
    mnist = TorchvisionDataModule("mnist").train_transform().transforms
    assert [type(t) for t in mnist] == [transforms.ToTensor]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_data_raises_early(name: str, tmp_path: Path) -> None:
    dm = TorchvisionDataModule(name, data_dir=tmp_path / "nowhere", download=False)
    for action in (dm.check_available, dm.prepare_data, dm.setup):
        with pytest.raises(FileNotFoundError) as info:
            action()
        message = str(info.value)
        assert "\n" not in message
        assert str((tmp_path / "nowhere").resolve()) in message
        assert "data.download=true" in message and dm.spec.display in message


def test_partial_files_are_reported(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing cifar-10-batches-py/test_batch"):
        TorchvisionDataModule("cifar10", data_dir=tmp_path).check_available()


def test_checksums_still_apply_without_the_patch(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    dm = TorchvisionDataModule("cifar10", data_dir=tmp_path)
    dm.check_available()  # the files exist ...
    with pytest.raises(RuntimeError, match=r"could not be loaded.*data\.download=true"):
        dm.setup()  # ... but are not the official ones


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown torchvision dataset 'stl10'"):
        TorchvisionDataModule("stl10")


@pytest.mark.usefixtures("skip_md5")
def test_worker_processes(tmp_path: Path) -> None:
    write_fake_svhn(tmp_path)
    dm = TorchvisionDataModule(
        "svhn", data_dir=tmp_path, val_fraction=0.25, batch_size=10, num_workers=2, persistent_workers=True
    )
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batches = [x for x, _ in loader]
    assert sum(len(x) for x in batches) == 30
