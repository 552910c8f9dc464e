"""Moons and digits datamodules, the common base class, and ``create_datamodule``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lsa_train.data import (
    DATAMODULE_NAMES,
    DigitsDataModule,
    MoonsDataModule,
    TorchvisionDataModule,
    create_datamodule,
)
from lsa_train.models import create_model


def _tensors(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.tensors  # type: ignore[attr-defined]


# -- moons ----------------------------------------------------------------------------------


def test_moons_shapes_ranges_and_splits() -> None:
    dm = MoonsDataModule(n_samples=500, n_test=200, seed=1)
    assert (dm.num_classes, dm.input_shape, dm.mean, dm.std, dm.name) == (2, (2,), None, None, "moons")
    dm.setup("fit")
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sizes == [400, 100, 200]
    for split in (dm.train_set, dm.val_set, dm.test_set):
        x, y = _tensors(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (2,)
        assert x.min() >= 0 and x.max() <= 1
        assert set(y.tolist()) == {0, 1}
    x_train, _ = _tensors(dm.train_set)
    # min/max come from the training split, so it spans [0, 1] exactly in each feature
    torch.testing.assert_close(x_train.min(0).values, torch.zeros(2))
    torch.testing.assert_close(x_train.max(0).values, torch.ones(2))
    assert dm.feature_min is not None and dm.feature_max is not None


def test_moons_determinism() -> None:
    a, b, c = (MoonsDataModule(n_samples=300, n_test=100, seed=s) for s in (5, 5, 6))
    for dm in (a, b, c):
        dm.setup()
    for split in ("train_set", "val_set", "test_set"):
        torch.testing.assert_close(_tensors(getattr(a, split))[0], _tensors(getattr(b, split))[0])
    assert not torch.equal(_tensors(a.train_set)[0], _tensors(c.train_set)[0])


def test_moons_loaders() -> None:
    dm = MoonsDataModule(n_samples=200, n_test=50, batch_size=32, eval_batch_size=100, drop_last=True)
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == 160 // 32 and train.batch_size == 32 and train.drop_last
    assert dm.val_dataloader().batch_size == 100 and not dm.val_dataloader().drop_last
    assert not train.persistent_workers  # persistent_workers only applies with num_workers > 0
    x, y = next(iter(train))
    assert x.shape == (32, 2) and y.shape == (32,)


def test_train_order_is_seeded() -> None:
    first = [next(iter(MoonsDataModule(n_samples=200, n_test=50, seed=3).train_dataloader()))[0] for _ in range(2)]
    torch.testing.assert_close(first[0], first[1])


@pytest.mark.parametrize(("batch_size", "expected_last"), [(4, 4), (5, 2), (1076, 1076)])
def test_a_last_training_batch_of_one_sample_is_dropped(batch_size: int, expected_last: int) -> None:
    dm = DigitsDataModule(batch_size=batch_size, eval_batch_size=180)  # 1077 training samples
    sizes = [len(y) for _, y in dm.train_dataloader()]
    assert min(sizes) >= 2 and sizes[-1] == expected_last
    assert sum(sizes) == (1076 if 1077 % batch_size == 1 else 1077)
    assert all(len(y) == 180 for _, y in dm.val_dataloader())  # evaluation keeps every sample


def test_analysis_subset_is_fixed_and_nested() -> None:
    dm = MoonsDataModule(n_samples=400, n_test=100, seed=2)
    x1, y1 = dm.analysis_subset(30)  # sets itself up
    x2, y2 = dm.analysis_subset(30)
    x3, _ = MoonsDataModule(n_samples=400, n_test=100, seed=2).analysis_subset(50)
    assert x1.shape == (30, 2) and y1.shape == (30,) and y1.dtype == torch.int64
    torch.testing.assert_close(x1, x2)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(x3[:30], x1)
    val_rows = {tuple(row) for row in _tensors(dm.val_set)[0].tolist()}
    assert all(tuple(row) in val_rows for row in x1.tolist())
    with pytest.raises(ValueError, match="analysis_subset needs 1 <= n <= 80"):
        dm.analysis_subset(81)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\)"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
        ({"num_workers": -1}, "num_workers"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MoonsDataModule(**kwargs)


def test_drop_last_with_a_batch_larger_than_the_training_set() -> None:
    dm = MoonsDataModule(n_samples=100, n_test=20, batch_size=500, drop_last=True)
    with pytest.raises(ValueError) as info:
        dm.setup()
    assert str(info.value) == (
        "batch_size 500 larger than the training set (80 samples) with drop_last=True would give no batches"
    )


def test_moons_model_kwargs_build_model_a() -> None:
    dm = MoonsDataModule(n_samples=100, n_test=20)
    kwargs = dm.model_kwargs()
    assert kwargs == {"num_classes": 2, "in_channels": 2, "input_size": None, "mean": None, "std": None}
    model = create_model("mlp_a", **kwargs)
    x, _ = dm.analysis_subset(4)
    assert model(x).shape == (4, 2)


# -- digits ---------------------------------------------------------------------------------


def test_digits_shapes_splits_and_stratification() -> None:
    dm = DigitsDataModule()
    assert (dm.num_classes, dm.input_shape, dm.name) == (10, (1, 8, 8), "digits")
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [1077, 360, 360]
    all_rows = set()
    for split in (dm.train_set, dm.val_set, dm.test_set):
        x, y = _tensors(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 8, 8)
        assert x.min() >= 0 and x.max() <= 1
        counts = torch.bincount(y, minlength=10).float()
        assert (counts.max() - counts.min()) <= 0.05 * len(y) + 2  # stratified: balanced classes
        all_rows |= {tuple(r) for r in x.flatten(1).tolist()}
    assert len(all_rows) >= 1700  # disjoint splits (load_digits has a few duplicate images)


def test_digits_values_are_divided_by_16() -> None:
    dm = DigitsDataModule()
    dm.setup()
    raw = load_digits().data / 16.0
    x, _ = _tensors(dm.test_set)
    raw_rows = {tuple(np.round(r, 6)) for r in raw}
    assert all(tuple(np.round(r, 6)) in raw_rows for r in x.flatten(1).double().numpy()[:20])


def test_digits_normalization_stats_come_from_the_train_split() -> None:
    dm = DigitsDataModule(seed=11)
    assert dm.mean is not None and dm.std is not None and len(dm.mean) == 1  # known before setup
    dm.setup()
    x, _ = _tensors(dm.train_set)
    assert dm.mean[0] == pytest.approx(x.mean().item(), rel=1e-5)
    assert dm.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-5)


def test_digits_determinism() -> None:
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(_tensors(a.val_set)[0], _tensors(b.val_set)[0])
    assert not torch.equal(_tensors(a.val_set)[0], _tensors(c.val_set)[0])
    torch.testing.assert_close(a.analysis_subset(16)[0], b.analysis_subset(16)[0])


def test_digits_resize_and_replicate() -> None:
    dm = DigitsDataModule(input_size=32, channels=3, batch_size=16)
    assert dm.input_shape == (3, 32, 32) and dm.mean is not None and len(dm.mean) == 3
    assert dm.mean[0] == dm.mean[1] == dm.mean[2]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x[:, 0], x[:, 2])
    small = DigitsDataModule()
    small.setup()
    dm.setup()
    resized = torch.nn.functional.interpolate(_tensors(small.test_set)[0], size=(32, 32), mode="bilinear")
    torch.testing.assert_close(_tensors(dm.test_set)[0][:, :1], resized.clamp(0, 1))
    kwargs = dm.model_kwargs()
    assert kwargs["in_channels"] == 3 and kwargs["input_size"] == (32, 32) and len(kwargs["mean"]) == 3
    model = create_model("resnet18", **kwargs).eval()
    with torch.no_grad():
        assert model(x[:2]).shape == (2, 10)


@pytest.mark.parametrize(("kwargs", "match"), [({"channels": 2}, "channels"), ({"input_size": 0}, "input_size")])
def test_digits_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


# -- registry -------------------------------------------------------------------------------


def test_create_datamodule() -> None:
    assert set(DATAMODULE_NAMES) == {
        "moons", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagefolder", "tensors"
    }
    assert isinstance(create_datamodule("moons", n_samples=100), MoonsDataModule)
    assert isinstance(create_datamodule("digits", batch_size=8), DigitsDataModule)
    dm = create_datamodule("cifar100", data_dir="/nonexistent")
    assert isinstance(dm, TorchvisionDataModule)
    assert (dm.num_classes, dm.input_shape, dm.name) == (100, (3, 32, 32), "cifar100")
    with pytest.raises(ValueError) as info:
        create_datamodule("imagenet")
    assert "\n" not in str(info.value) and "cifar10" in str(info.value) and "moons" in str(info.value)
