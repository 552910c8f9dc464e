"""``TensorDataModule``: ``.pt`` and ``.npz`` files of small synthetic arrays; splits, scaling, bad data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from lsa_train.data import TensorDataModule, create_datamodule


def images_u8(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 6, 6), dtype=np.uint8), np.arange(n) % 3


def _all(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


def test_npz_uint8_images_are_scaled_and_split(tmp_path: Path) -> None:
    x, y = images_u8()
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array([1, 2, 3]))  # an extra key is ignored
    dm = TensorDataModule(tmp_path / "d.npz", batch_size=4)
    assert dm.input_shape == (3, 6, 6) and dm.num_classes == 3 and dm.name == "tensors"
    assert dm.split_sizes() == {"train": 21, "val": 3, "test": 6}  # ceil(0.2*30)=6 test, ceil(0.1*24)=3 val
    dm.setup()
    parts = [_all(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    for xs, ys in parts:
        assert xs.dtype == torch.float32 and ys.dtype == torch.int64
        assert float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0
    assert Counter(parts[2][1].tolist()) == {0: 2, 1: 2, 2: 2}  # stratified
    # every sample appears once, exactly x / 255 with its label
    xs = torch.cat([p[0] for p in parts])
    ys = torch.cat([p[1] for p in parts])
    expected = torch.from_numpy(x).float() / 255.0
    for sample, label in zip(xs, ys, strict=True):
        match = [i for i in range(len(x)) if torch.equal(expected[i], sample)]
        assert len(match) == 1 and y[match[0]] == label
    # per-channel statistics of the training split
    train = parts[0][0].double()
    assert dm.mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert dm.std == pytest.approx(train.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert dm.model_kwargs()["input_size"] == (6, 6) and dm.model_kwargs()["in_channels"] == 3


def test_pt_float_vectors_with_a_test_split(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 5, generator=g, dtype=torch.float64), torch.arange(40) % 2
    x[:, 4] = 0.5  # a constant feature: std 1, so normalization only centres it
    x_test, y_test = torch.rand(7, 5, generator=g), torch.tensor([0, 1, 0, 1, 0, 1, 2])
    torch.save({"x": x, "y": y, "x_test": x_test, "y_test": y_test}, tmp_path / "d.pt")
    dm = TensorDataModule(tmp_path / "d.pt", val_fraction=0.25, batch_size=8)
    assert dm.num_classes == 3  # max over both splits + 1
    assert dm.input_shape == (5,) and dm.split_sizes() == {"train": 30, "val": 10, "test": 7}
    assert len(dm.mean) == 5 and dm.std[4] == 1.0 and dm.mean[4] == pytest.approx(0.5)
    kwargs = dm.model_kwargs()
    assert kwargs["input_size"] is None and kwargs["in_channels"] == 5
    dm.setup()
    test_x, test_y = _all(dm.test_set)
    assert torch.equal(test_x, x_test) and torch.equal(test_y, y_test)
    assert _all(dm.train_set)[0].dtype == torch.float32
    same = TensorDataModule(tmp_path / "d.pt", val_fraction=0.25, num_classes=np.int64(5))  # ids 3, 4 unused
    assert same.num_classes == 5 and type(same.num_classes) is int and same.split_sizes() == dm.split_sizes()


def test_split_is_seeded(tmp_path: Path) -> None:
    x, y = images_u8(60)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a, b, c = (TensorDataModule(tmp_path / "d.npz", seed=s) for s in (1, 1, 2))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(_all(a.val_set)[0], _all(b.val_set)[0])
    assert not torch.equal(_all(a.val_set)[0], _all(c.val_set)[0])


def test_registry_name_and_config(tmp_path: Path) -> None:
    x, y = images_u8()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert isinstance(create_datamodule("tensors", path=tmp_path / "d.npz"), TensorDataModule)
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=tensors", f"data.path={tmp_path / 'd.npz'}"])
        missing = compose("train", overrides=["data=tensors"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, TensorDataModule) and dm.input_shape == (3, 6, 6)
    with pytest.raises(MissingMandatoryValue):
        _ = missing.data.path


# -- bad data: one line naming the file ------------------------------------------------------------
def _error(path: Path, exc: type[Exception] = ValueError, **kwargs: object) -> str:
    with pytest.raises(exc) as info:
        TensorDataModule(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "none.pt", FileNotFoundError)
    (tmp_path / "d.csv").write_text("1,2")
    assert "'.csv'" in _error(tmp_path / "d.csv")


class Payload:
    """A class a ``weights_only`` load must refuse to rebuild."""


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    torch.save({"x": torch.rand(4, 2), "y": torch.zeros(4, dtype=torch.long), "obj": Payload()}, tmp_path / "d.pt")
    message = _error(tmp_path / "d.pt")
    assert "could not be read safely" in message and "Payload" in message and "weights_only" in message
    np.savez(tmp_path / "o.npz", x=np.array([object()] * 4, dtype=object), y=np.zeros(4, dtype=int))
    assert "could not be read safely" in _error(tmp_path / "o.npz")


def test_missing_keys(tmp_path: Path) -> None:
    torch.save({"inputs": torch.rand(4, 2), "y": torch.zeros(4, dtype=torch.long)}, tmp_path / "a.pt")
    assert "no 'x'" in _error(tmp_path / "a.pt")
    torch.save(torch.rand(4, 2), tmp_path / "b.pt")
    assert "expected a dict" in _error(tmp_path / "b.pt")
    x, y = images_u8()
    np.savez(tmp_path / "c.npz", x=x, y=y, x_test=x[:3])
    assert "only one of 'x_test' and 'y_test'" in _error(tmp_path / "c.npz")


def test_x_outside_unit_interval_and_bad_dtype_or_shape(tmp_path: Path) -> None:
    y = np.arange(20) % 2
    np.savez(tmp_path / "a.npz", x=np.linspace(-0.5, 1.5, 40).reshape(20, 2), y=y)
    message = _error(tmp_path / "a.npz")
    assert "outside [0, 1]" in message and "min -0.5" in message and "max 1.5" in message
    np.savez(tmp_path / "b.npz", x=np.full((20, 2), np.nan), y=y)
    assert "NaN" in _error(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.ones((20, 2), dtype=np.int64), y=y)
    assert "dtype" in _error(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=np.ones((20, 2, 2), dtype=np.float32), y=y)
    assert "(N, C, H, W)" in _error(tmp_path / "d.npz")


def test_labels_outside_range_or_not_integers(tmp_path: Path) -> None:
    x, y = images_u8()
    np.savez(tmp_path / "a.npz", x=x, y=y)
    assert "label 2 outside [0, 2)" in _error(tmp_path / "a.npz", num_classes=2)
    np.savez(tmp_path / "b.npz", x=x, y=y - 1)
    assert "label -1 outside" in _error(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=x, y=y.astype(np.float32))
    assert "integer class ids" in _error(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=x[:12], y=y[:12], x_test=x[:3], y_test=np.array([0, 1, 7]))
    assert "label 7 outside [0, 3)" in _error(tmp_path / "d.npz", num_classes=3)


def test_mismatched_lengths_and_shapes(tmp_path: Path) -> None:
    x, y = images_u8()
    np.savez(tmp_path / "a.npz", x=x, y=y[:-1])
    assert "mismatched lengths: x has 30 samples, y has 29" in _error(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:4], y_test=y[:3])
    assert "x_test has 4 samples, y_test has 3" in _error(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=x, y=y, x_test=x[:4, :1], y_test=y[:4])
    assert "x_test samples have shape (1, 6, 6)" in _error(tmp_path / "c.npz")


def test_impossible_stratified_split_and_bad_statistics(tmp_path: Path) -> None:
    x, y = images_u8(6)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 0, 0, 0, 0, 1]))
    assert "stratified" in _error(tmp_path / "a.npz")
    x, y = images_u8()
    np.savez(tmp_path / "b.npz", x=x, y=y)
    with pytest.raises(ValueError, match="3 entries"):
        TensorDataModule(tmp_path / "b.npz", mean=[0.5], std=[0.2])
    with pytest.raises(ValueError, match="> 0"):
        TensorDataModule(tmp_path / "b.npz", mean=[0.5] * 3, std=[0.2, 0.0, 0.2])
    given = TensorDataModule(tmp_path / "b.npz", mean=[0.5] * 3, std=[0.25] * 3)
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25)


def test_channels_last_images_are_refused_with_the_transpose_or_read_with_layout_nhwc(tmp_path: Path) -> None:
    x, y = images_u8()
    np.savez(tmp_path / "a.npz", x=x.transpose(0, 2, 3, 1).copy(), y=y)  # (N, 6, 6, 3)
    message = _error(tmp_path / "a.npz")
    assert "(30, 6, 6, 3), which looks channels-last" in message and "x.transpose(0, 3, 1, 2)" in message
    assert "data.layout=nhwc" in message
    nhwc = TensorDataModule(tmp_path / "a.npz", layout="nhwc")
    nchw = TensorDataModule(tmp_path / "a.npz", layout="nchw")  # taken as it is: 6 channels of 6x3
    assert nhwc.input_shape == (3, 6, 6) and nchw.input_shape == (6, 6, 3)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    plain = TensorDataModule(tmp_path / "b.npz")
    nhwc.setup()
    plain.setup()
    assert torch.equal(_all(nhwc.train_set)[0], _all(plain.train_set)[0])  # the same images, same splits
    np.savez(tmp_path / "c.npz", x=x.transpose(0, 2, 3, 1).copy(), y=y, x_test=x[:4], y_test=y[:4])
    assert "x_test has shape (4, 3, 6, 6)" not in _error(tmp_path / "c.npz", layout="nhwc")  # both transposed
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((30, 5)), y=y)
    assert "layout='nhwc' applies to 4-D images" in _error(tmp_path / "d.npz", layout="nhwc")
    with pytest.raises(ValueError, match=r"layout must be one of \['auto', 'nchw', 'nhwc'\], got 'hwc'"):
        TensorDataModule(tmp_path / "b.npz", layout="hwc")


def test_labels_that_are_not_the_ids_0_to_k_minus_1_are_refused_unless_num_classes_is_given(tmp_path: Path) -> None:
    x, _ = images_u8(20)
    y = np.where(np.arange(20) % 2 == 0, 3, 7)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    message = _error(tmp_path / "a.npz")
    assert "not the class ids 0..7: 2 distinct labels {3, 7}, no sample of {0, 1, 2, 4, 5, 6}" in message
    assert "np.unique(y, return_inverse=True)[1]" in message and "data.num_classes=8" in message
    kept = TensorDataModule(tmp_path / "a.npz", num_classes=8)  # explicit: empty classes allowed
    assert kept.num_classes == 8


def test_numpy_integer_num_classes_is_accepted_by_the_data_and_the_model_builder(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lsa_train.factory import data_facts

    x, y = images_u8()
    np.savez(tmp_path / "a.npz", x=x, y=y)
    assert TensorDataModule(tmp_path / "a.npz", num_classes=np.int32(3)).num_classes == 3
    with pytest.raises(ValueError, match="integer >= 2"):
        TensorDataModule(tmp_path / "a.npz", num_classes=np.bool_(True))

    class Own(L.LightningDataModule):  # a user's data module whose class count came from numpy
        num_classes = np.unique(y).size  # numpy.int64
        input_shape = (3, 6, 6)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(torch.rand(4, 3, 6, 6), torch.zeros(4, dtype=torch.long)))

    facts = data_facts(Own())
    assert facts["num_classes"] == 3 and type(facts["num_classes"]) is int
    Own.num_classes = 2.5  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"has num_classes=2.5 \(float\); expected an integer >= 1"):
        data_facts(Own())
