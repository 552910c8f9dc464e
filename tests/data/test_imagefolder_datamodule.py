"""``ImageFolderDataModule``: tiny image folders written with PIL; layout, channels, sizes, splits, bad data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from lsa_train.data import ImageFolderDataModule, create_datamodule

CLASSES = ("cat", "dog", "eel")


def write_images(
    folder: Path, classes: tuple[str, ...] = CLASSES, n: int = 6, size: tuple[int, int] = (12, 12), mode: str = "L",
    seed: int = 0,
) -> list[Path]:
    """``n`` random images of ``size`` (H, W) per class under ``folder/<class>/``; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size if mode == "L" else (*size, 3)
            path = folder / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
            paths.append(path)
    return paths


def pixels(path: Path, mode: str) -> torch.Tensor:
    """The image as ``ToTensor`` gives it: float ``(C, H, W)`` in ``[0, 1]``."""
    array = np.asarray(Image.open(path).convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def small(root: Path, **kwargs: object) -> ImageFolderDataModule:
    """18-image folders need larger held-out fractions than the defaults for a stratified split."""
    kwargs = {"val_fraction": 0.25, "test_fraction": 0.2, "batch_size": 4, **kwargs}
    return ImageFolderDataModule(root, **kwargs)  # type: ignore[arg-type]


# -- facts and contents ---------------------------------------------------------------------------
def test_grey_folder_facts_splits_and_statistics(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "train")
    dm = small(tmp_path)
    assert dm.classes == list(CLASSES) and dm.num_classes == 3 and dm.input_shape == (1, 12, 12)
    assert dm.split_sizes() == {"train": 10, "val": 4, "test": 4}
    assert dm.split_sources == {"train": "folder", "val": "train", "test": "train"}
    # mean/std over the training split's pixels, known before setup (the app builds the model first)
    train_pos = dm._indices["train"][1]
    train_pixels = torch.stack([pixels(paths[i], "L") for i in train_pos]).double()
    assert dm.mean == pytest.approx((float(train_pixels.mean()),), abs=1e-9)
    assert dm.std == pytest.approx((float(train_pixels.std(unbiased=False)),), abs=1e-9)
    kwargs = dm.model_kwargs()
    assert kwargs["in_channels"] == 1 and kwargs["input_size"] == (12, 12) and kwargs["num_classes"] == 3
    dm.setup()
    seen = Counter()
    for split in (dm.train_set, dm.val_set, dm.test_set):
        for index in range(len(split)):
            x, y = split[index]
            seen[y] += 1
            assert x.dtype == torch.float32 and x.shape == (1, 12, 12)
    assert seen == {0: 6, 1: 6, 2: 6}
    # validation items are the files' pixels (no augmentation) with their class folder's label
    val_pos = dm._indices["val"][1]
    for index, position in enumerate(val_pos):
        x, y = dm.val_set[index]
        assert torch.equal(x, pixels(paths[position], "L")) and y == position // 6


def test_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    write_images(tmp_path / "train", n=10)
    first, again = small(tmp_path, seed=1), small(tmp_path, seed=1)
    other = small(tmp_path, seed=2)
    for split in ("train", "val", "test"):
        assert np.array_equal(first._indices[split][1], again._indices[split][1])
    assert not np.array_equal(first._indices["val"][1], other._indices["val"][1])
    targets = np.asarray(first._folders["train"].targets)
    for split in ("val", "test"):  # ceil(0.2 * 30) = 6 test, ceil(0.25 * 24) = 6 val: 2 per class
        assert Counter(targets[first._indices[split][1]].tolist()) == {0: 2, 1: 2, 2: 2}
    used = np.concatenate([first._indices[s][1] for s in ("train", "val", "test")])
    assert sorted(used.tolist()) == list(range(30))


def test_rgb_and_mixed_folders(tmp_path: Path) -> None:
    write_images(tmp_path / "rgb" / "train", mode="RGB")
    dm = small(tmp_path / "rgb")
    assert dm.input_shape == (3, 12, 12) and len(dm.mean) == 3 and len(dm.std) == 3
    mixed = tmp_path / "mixed" / "train"
    write_images(mixed, mode="RGB")
    grey = write_images(mixed, classes=("cat",), n=1, mode="L", seed=5)[0].rename(mixed / "cat" / "grey.png")
    dm = small(tmp_path / "mixed")
    assert dm.input_shape == (3, 12, 12)
    dm.setup()
    position = [p for p, _ in dm._folders["train"].samples].index(str(grey))
    x, _ = dm._folders["train"][position]
    x = dm.eval_transform()(x)
    assert x.shape == (3, 12, 12) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    forced = small(tmp_path / "rgb", channels=1)
    forced.setup()
    assert forced.input_shape == (1, 12, 12) and forced.train_set[0][0].shape == (1, 12, 12)


def test_input_size_resizes_and_center_crops(tmp_path: Path) -> None:
    write_images(tmp_path / "train", classes=("a", "b"), n=5, size=(12, 16))
    write_images(tmp_path / "train", classes=("a", "b"), n=1, size=(10, 10), seed=3)  # overwrites 0.png
    with pytest.raises(ValueError, match="differ in size") as info:
        small(tmp_path)
    assert "input_size" in str(info.value) and "\n" not in str(info.value)
    dm = small(tmp_path, input_size=8, augment=False)
    assert dm.input_shape == (1, 8, 8)
    dm.setup()
    assert all(dm.train_set[i][0].shape == (1, 8, 8) for i in range(len(dm.train_set)))
    # a 16x12 (W x H) image: shorter side 12 -> 8 (long side int(8 * 16 / 12) = 10), then the centre 8 columns
    path = tmp_path / "train" / "a" / "1.png"
    x = dm.eval_transform()(dm._folders["train"].loader(str(path)))
    resized = np.asarray(Image.open(path).resize((10, 8), Image.Resampling.BILINEAR), dtype=np.float32)
    assert torch.allclose(x, torch.from_numpy(resized[None, :, 1:9] / 255.0), atol=1e-6)


def test_val_and_test_folders_share_the_train_classes(tmp_path: Path) -> None:
    write_images(tmp_path / "train", n=4)
    write_images(tmp_path / "val", classes=("eel",), n=2, seed=1)  # a class subset: labels from train/
    write_images(tmp_path / "test", classes=("dog", "eel"), n=3, seed=2)
    dm = ImageFolderDataModule(tmp_path, batch_size=4)
    assert dm.split_sources == {"train": "folder", "val": "folder", "test": "folder"}
    assert dm.split_sizes() == {"train": 12, "val": 2, "test": 6}
    dm.setup()
    assert [dm.val_set[i][1] for i in range(2)] == [2, 2]
    assert sorted(dm.test_set[i][1] for i in range(6)) == [1, 1, 1, 2, 2, 2]


def test_only_test_folder_splits_val_off_train(tmp_path: Path) -> None:
    write_images(tmp_path / "train", n=8)
    write_images(tmp_path / "test", n=1, seed=2)
    dm = ImageFolderDataModule(tmp_path, val_fraction=0.25, batch_size=4)
    assert dm.split_sources["val"] == "train" and dm.split_sizes() == {"train": 18, "val": 6, "test": 3}


def test_augmentation_switch(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    plain = small(tmp_path, augment=False)
    plain.setup()
    x_eval = plain.eval_transform()(plain._folders["train"][0][0])
    assert all(torch.equal(plain.train_transform()(plain._folders["train"][0][0]), x_eval) for _ in range(3))
    augmented = small(tmp_path, augment=True, crop_padding=4)
    names = [type(t).__name__ for t in augmented.train_transform().transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor"]
    torch.manual_seed(0)
    draws = [augmented.train_transform()(augmented._folders["train"][0][0]) for _ in range(5)]
    assert all(d.shape == (1, 12, 12) for d in draws) and any(not torch.equal(d, x_eval) for d in draws)


def test_augmentation_with_persistent_workers_resumes_from_the_saved_state(tmp_path: Path) -> None:
    write_images(tmp_path / "train")

    def batches(loader: torch.utils.data.DataLoader) -> list[torch.Tensor]:
        return [torch.cat([x.flatten(1), y[:, None].float()], 1) for x, y in loader]

    workers = {"num_workers": 2, "persistent_workers": True, "augment": True, "crop_padding": 4}
    uninterrupted = small(tmp_path, **workers)
    loader = uninterrupted.train_dataloader()
    first = batches(loader)
    state = uninterrupted.state_dict()  # what an epoch-end checkpoint holds
    second = batches(loader)  # the same workers, their generators one epoch further
    resumed = small(tmp_path, **workers)
    resumed.setup()
    resumed.load_state_dict(state)
    assert all(map(torch.equal, batches(resumed.train_dataloader()), second))
    # every sample is augmented from its own seed: the worker count does not matter either
    one_worker = small(tmp_path, num_workers=1, persistent_workers=False, augment=True, crop_padding=4)
    assert all(map(torch.equal, batches(one_worker.train_dataloader()), first))
    assert any(not torch.equal(a, b) for a, b in zip(first, second))  # and the augmentation is random
    # a loader with workers draws its workers' base seed from a generator of its own, not the global one
    before = torch.get_rng_state()
    batches(resumed.val_dataloader())
    assert torch.equal(torch.get_rng_state(), before)


def test_given_statistics_are_used_and_checked(tmp_path: Path) -> None:
    write_images(tmp_path / "train", mode="RGB")
    dm = small(tmp_path, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    assert dm.mean == (0.5, 0.4, 0.3) and dm.std == (0.2, 0.2, 0.2)
    with pytest.raises(ValueError, match="3 entries"):
        small(tmp_path, mean=[0.5], std=[0.2])
    with pytest.raises(ValueError, match="both mean and std"):
        small(tmp_path, mean=[0.5, 0.4, 0.3])


def test_registry_name(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    dm = create_datamodule("imagefolder", root=tmp_path, val_fraction=0.25, test_fraction=0.2)
    assert isinstance(dm, ImageFolderDataModule) and dm.name == "imagefolder"


def test_config_composes_and_requires_root(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=imagefolder", f"data.root={tmp_path}", "data.val_fraction=0.25",
                                          "data.test_fraction=0.2", "data.num_workers=0"])
        missing = compose("train", overrides=["data=imagefolder"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageFolderDataModule) and dm.input_shape == (1, 12, 12) and dm.augment
    with pytest.raises(MissingMandatoryValue):
        _ = missing.data.root


def test_augment_false_in_the_config_switches_augmentation_off(tmp_path: Path) -> None:
    """``data.augment=false`` on the command line: training batches are the files' pixels, unchanged."""
    write_images(tmp_path / "train")
    base = ["data=imagefolder", f"data.root={tmp_path}", "data.val_fraction=0.25", "data.test_fraction=0.2",
            "data.num_workers=0", "data.batch_size=64"]
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        on = compose("train", overrides=base)
        off = compose("train", overrides=[*base, "data.augment=false"])
        bad = compose("train", overrides=[*base, "data.augment=no"])
    assert on.data.augment is True  # the default: random crop + flip
    plain = instantiate(off.data)
    assert plain.augment is False
    assert [type(t).__name__ for t in plain.train_transform().transforms] == ["ToTensor"]
    plain.setup()
    folder, positions = plain._indices["train"]
    expected = torch.stack([plain.eval_transform()(plain._folders[folder][p][0]) for p in positions])
    torch.manual_seed(0)
    x, _ = next(iter(plain.train_dataloader()))
    # the same images in the loader's (shuffled) order: sort both by their pixel sums to compare
    assert x.shape == expected.shape
    assert torch.equal(x.flatten(1).sum(1).sort().values, expected.flatten(1).sum(1).sort().values)
    augmented = instantiate(on.data)
    augmented.setup()
    torch.manual_seed(0)
    x_aug, _ = next(iter(augmented.train_dataloader()))
    assert not torch.equal(x_aug.flatten(1).sum(1).sort().values, expected.flatten(1).sum(1).sort().values)
    from lsa_train.app.builders import build_datamodule
    from lsa_train.app.errors import ConfigError

    with pytest.raises(ConfigError, match="augment must be true or false, got 'no'") as info:
        build_datamodule(bad)  # the app's one line, before any training
    assert "\n" not in str(info.value)


# -- bad data: one line naming the path -----------------------------------------------------------
def _one_line_error(exc: type[Exception], root: Path, **kwargs: object) -> str:
    with pytest.raises(exc) as info:
        small(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root_and_missing_train(tmp_path: Path) -> None:
    message = _one_line_error(FileNotFoundError, tmp_path / "nope")
    assert str(tmp_path / "nope") in message and "does not exist" in message
    write_images(tmp_path / "val")
    message = _one_line_error(FileNotFoundError, tmp_path)
    assert str(tmp_path) in message and "no 'train' directory" in message


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "train" / "loose.png")  # an image, but not in a class folder
    message = _one_line_error(ValueError, tmp_path)
    assert str(tmp_path / "train") in message and "no class folders" in message
    write_images(tmp_path / "train", classes=("solo",))
    message = _one_line_error(ValueError, tmp_path)
    assert str(tmp_path / "train") in message and "one class folder ('solo')" in message


def test_class_folder_without_images(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    (tmp_path / "train" / "fox").mkdir()
    (tmp_path / "train" / "fox" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "fox" / "._0.png").write_bytes(b"macOS metadata")  # hidden: skipped, not unreadable
    message = _one_line_error(ValueError, tmp_path)
    assert str(tmp_path / "train" / "fox") in message and "no images" in message and ".png" in message


def test_unreadable_image(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"these bytes are not a PNG")
    message = _one_line_error(ValueError, tmp_path)
    assert str(bad) in message and "unreadable image" in message


def test_val_folder_with_an_unknown_class(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    write_images(tmp_path / "val", classes=("cat", "yak"), n=1)
    message = _one_line_error(ValueError, tmp_path)
    assert str(tmp_path / "val") in message and "'yak'" in message


def test_too_few_images_for_a_stratified_split(tmp_path: Path) -> None:
    write_images(tmp_path / "train", n=1)
    message = _one_line_error(ValueError, tmp_path)
    assert str(tmp_path / "train") in message and "test_fraction" in message


def test_bad_arguments(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    for kwargs, match in (({"input_size": 0}, "input_size"), ({"channels": 2}, "channels"),
                          ({"crop_padding": -1}, "crop_padding"), ({"test_fraction": 1.0}, "test_fraction")):
        with pytest.raises(ValueError, match=match):
            small(tmp_path, **kwargs)


def test_check_available_notices_a_removed_file(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "train")
    dm = small(tmp_path)
    dm.check_available()
    paths[3].unlink()
    with pytest.raises(FileNotFoundError, match="no longer exists") as info:
        dm.check_available()
    assert str(paths[3]) in str(info.value)


# -- high-depth grey images, truncated files, class names, loader settings ----------------------------
def _write_pgm16(path: Path, values: np.ndarray) -> None:
    """A 16-bit binary PGM (maxval 65535), which PIL reads in mode ``I``."""
    height, width = values.shape
    path.write_bytes(f"P5\n{width} {height}\n65535\n".encode() + values.astype(">u2").tobytes())


def test_16_bit_32_bit_and_float_grey_images_are_scaled_by_their_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    expected: dict[str, np.ndarray] = {}
    for name in CLASSES:
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            path = tmp_path / "train" / name / f"{i}.png"
            values = rng.integers(0, 65536, (6, 6), dtype=np.uint16)
            values[0, 0] = 1000  # far above 255: clipped to white (1.0) if read as 8 bits
            Image.fromarray(values).save(path)  # mode I;16
            expected[str(path)] = values.astype(np.float64) / 65535
        pgm = tmp_path / "train" / name / "pgm.pgm"
        values = rng.integers(0, 65536, (6, 6)).astype(np.int64)
        _write_pgm16(pgm, values)
        expected[str(pgm)] = values / 65535
        tif32 = tmp_path / "train" / name / "int32.tif"
        values = rng.integers(0, 2**31 - 1, (6, 6)).astype(np.int32)
        Image.fromarray(values).save(tif32)  # mode I, 32 bits per sample: the int32 range
        expected[str(tif32)] = values.astype(np.float64) / (2**31 - 1)
        tif_f = tmp_path / "train" / name / "float.tif"
        values = rng.random((6, 6)).astype(np.float32)
        Image.fromarray(values).save(tif_f)  # mode F, in [0, 1]: as it is
        expected[str(tif_f)] = values.astype(np.float64)
    assert {Image.open(p).mode for p in expected} == {"I;16", "I", "F"}
    dm = small(tmp_path, augment=False)
    assert dm.input_shape == (1, 6, 6)
    folder = dm._folders["train"]
    transform = dm.eval_transform()
    for path, _ in folder.samples:
        x = transform(folder.loader(path))
        assert x.dtype == torch.float32 and x.shape == (1, 6, 6)
        assert np.allclose(x[0].numpy(), expected[path], atol=1e-6), path
    # the statistics pass reads the same scaled values
    train = np.stack([expected[folder.samples[i][0]] for i in dm._indices["train"][1]])
    assert dm.mean == pytest.approx((train.mean(),), abs=1e-5)
    # in an RGB folder the 16-bit image is rounded to 8 bits, not clipped
    write_images(tmp_path / "rgb" / "train", mode="RGB")
    sixteen = tmp_path / "rgb" / "train" / "cat" / "sixteen.png"
    Image.fromarray(np.full((12, 12), 32896, dtype=np.uint16)).save(sixteen)  # 32896 / 65535 * 255 = 128.0
    rgb = small(tmp_path / "rgb")
    assert rgb.input_shape == (3, 12, 12)
    assert torch.equal(rgb.eval_transform()(rgb._folders["train"].loader(str(sixteen))), torch.full((3, 12, 12),
                                                                                                    128 / 255))


def test_float_images_outside_the_unit_interval_and_negative_integers_are_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "train")
    bad = tmp_path / "train" / "cat" / "hdr.tif"
    Image.fromarray(np.full((12, 12), 3.5, dtype=np.float32)).save(bad)
    message = _one_line_error(ValueError, tmp_path)
    assert f"float image '{bad}' has values in [3.5, 3.5]" in message and "must lie in [0, 1]" in message
    bad.unlink()
    negative = tmp_path / "train" / "dog" / "signed.tif"
    Image.fromarray(np.full((12, 12), -7, dtype=np.int32)).save(negative)
    message = _one_line_error(ValueError, tmp_path)
    assert f"integer image '{negative}' (mode I) has negative values" in message


def test_a_truncated_image_fails_at_setup_even_with_given_statistics(tmp_path: Path) -> None:
    write_images(tmp_path / "train", mode="RGB")
    write_images(tmp_path / "test", mode="RGB", n=2, seed=4)
    for name, save in (("cut.png", "PNG"), ("cut.jpg", "JPEG")):
        whole = tmp_path / name
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(whole, save)
        cut = tmp_path / "test" / "dog" / name  # in the test split: never read by a statistics pass
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        message = _one_line_error(ValueError, tmp_path, mean=[0.5] * 3, std=[0.25] * 3)
        assert f"unreadable image '{cut}'" in message and "truncated" in message
        cut.unlink()
    assert small(tmp_path, mean=[0.5] * 3, std=[0.25] * 3).split_sizes()["test"] == 6


def test_class_names_and_the_log_of_classes_and_split_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lsa_train.data import DigitsDataModule, MoonsDataModule

    write_images(tmp_path / "train")
    with caplog.at_level("INFO", logger="lsa_train.data.imagefolder"):
        dm = small(tmp_path)
    assert dm.class_names == CLASSES
    assert (f"image folder '{tmp_path}': 3 classes (cat, dog, eel); images per split: train 10, "
            "val 4 (split off train/), test 4 (split off train/)") in caplog.text
    assert DigitsDataModule().class_names == tuple("0123456789")
    assert MoonsDataModule().class_names == ("0", "1")


def test_loader_settings_follow_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lsa_train.data.base as base

    write_images(tmp_path / "train")
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=imagefolder", f"data.root={tmp_path}", "data.val_fraction=0.25",
                                          "data.test_fraction=0.2"])
        cifar = compose("train", overrides=["data=cifar10"])
    assert cfg.data.num_workers == "auto" and cfg.data.pin_memory == "auto" and cifar.data.num_workers == "auto"
    monkeypatch.setattr(base, "available_cpus", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = instantiate(cfg.data)
    assert (dm.num_workers, dm.pin_memory) == (1, False)  # a 2-core machine without a GPU
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and not loader.pin_memory
    assert (instantiate(cifar.data).num_workers, instantiate(cifar.data).pin_memory) == (1, False)
    monkeypatch.setattr(base, "available_cpus", lambda: 32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (instantiate(cfg.data).num_workers, instantiate(cfg.data).pin_memory) == (4, True)
    monkeypatch.setattr(base, "available_cpus", lambda: 1)
    assert instantiate(cfg.data).num_workers == 0
    explicit = small(tmp_path, num_workers=3, pin_memory=False)  # an explicit setting is kept
    assert (explicit.num_workers, explicit.pin_memory) == (3, False)
    for kwargs, match in (({"num_workers": "many"}, "num_workers must be an integer >= 0 or 'auto', got 'many'"),
                          ({"pin_memory": "yes"}, "pin_memory must be true, false or 'auto', got 'yes'")):
        with pytest.raises(ValueError, match=match):
            small(tmp_path, **kwargs)
