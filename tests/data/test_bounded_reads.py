"""Data files and folders from elsewhere are data, and reading them is bounded: expanded tensors, arrays over
``data.max_gib`` (checked from ``.npz`` headers and ``.pt`` zip records before decompressing), image folders
with symlinks out of the root or round a loop, FIFOs with image names, and walks over ``data.max_files``."""

from __future__ import annotations

import os
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hostile_data import write_expanded_pt, write_npz_bomb, write_symlink_escape, write_symlink_loop
from hydra import compose, initialize_config_module
from PIL import Image
from torchvision.datasets.folder import make_dataset

from lsa_train.app.builders import build_datamodule
from lsa_train.app.errors import ConfigError
from lsa_train.data import ImageFolderDataModule, TensorDataModule
from lsa_train.data import tensors as tensors_module
from lsa_train.data.imagefolder import FolderWalk, is_image_file
from lsa_train.data.limits import DEFAULT_MAX_FILES, GIB, machine_memory, resolve_max_gib

MIB = 2**20


def _refusal(path: Path, cls: type = TensorDataModule, **kwargs: object) -> tuple[str, int]:
    """The one-line message of the refusal and the peak of traced (Python and numpy) memory."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            cls(path, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message, peak


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders ``os.scandir`` lists during the test; a walk listing more than 50 fails the test at once
    (a walk round a symlink loop would list without end)."""
    listed: list[str] = []
    scandir = os.scandir

    def counted(path: Any = ".") -> Any:
        listed.append(str(path))
        if len(listed) > 50:
            raise AssertionError(f"the walk listed more than 50 folders: {listed[-5:]}")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    return listed


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if a ``.pt`` file is loaded at all (its refusal must come first)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read_torch_file was called")
    monkeypatch.setattr(tensors_module, "read_torch_file", refuse)


def _labelled(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 3


# -- tensor files ---------------------------------------------------------------------------------------------
def test_expanded_tensors_are_refused_before_anything_copies_them(tmp_path: Path) -> None:
    path = write_expanded_pt(tmp_path / "expanded.pt")  # 15 GiB of values in 2 KB
    assert path.stat().st_size < 4096
    message, peak = _refusal(path)
    assert "x is an expanded or overlapping view" in message and "14.3 GiB of values lie in 256 bytes" in message
    assert "x.contiguous()" in message
    assert peak < 10 * MIB  # copying x would allocate 14.3 GiB


def test_overlapping_strides_are_refused(tmp_path: Path) -> None:
    x = torch.rand(1063).as_strided((1000, 64), (1, 1))  # no stride 0, but 64000 values in 1063 stored ones
    torch.save({"x": x, "y": torch.arange(1000) % 2}, tmp_path / "overlap.pt")
    message, _ = _refusal(tmp_path / "overlap.pt")
    assert "x is an expanded or overlapping view" in message and "strides (1, 1)" in message


def test_permuted_and_sliced_tensors_still_load(tmp_path: Path) -> None:
    """Non-contiguous views that own their values (a permutation, a slice of a larger storage) are fine."""
    x, y = _labelled(40)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    torch.save({"x": nhwc.permute(0, 3, 1, 2), "y": y[:40], "x_test": x[:30][::2][:9], "y_test": y[:9]},
               tmp_path / "views.pt")
    dm = TensorDataModule(tmp_path / "views.pt", batch_size=4)
    assert dm.input_shape == (3, 4, 4) and sum(dm.split_sizes().values()) == 49


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_files_over_max_gib_are_refused_naming_the_limit(tmp_path: Path, suffix: str) -> None:
    x, y = _labelled(64)  # 12 KiB of float32 x, 512 bytes of int64 y
    path = tmp_path / f"d{suffix}"
    if suffix == ".pt":
        torch.save({"x": x, "y": y}, path)
    else:
        np.savez_compressed(path, x=x.numpy(), y=y.numpy())
    message, _ = _refusal(path, max_gib=4 / MIB)  # 4 KiB
    assert "more than the limit of 3.8147e-06 GiB (data.max_gib=3.8147e-06)" in message
    assert "raise data.max_gib" in message
    if suffix == ".npz":
        assert "x (64, 3, 4, 4) float32" in message and "12.5 KiB" in message
    assert TensorDataModule(path, max_gib=1e-4, batch_size=8).input_shape == (3, 4, 4)  # 105 KiB: loads


def test_an_npz_bomb_is_refused_from_its_headers_without_decompressing(tmp_path: Path) -> None:
    path = write_npz_bomb(tmp_path / "bomb.npz")  # 2.5 GiB of zeros in 2.6 MB, a valid archive
    assert path.stat().st_size < 4 * MIB
    with zipfile.ZipFile(path) as archive:
        assert sum(info.file_size for info in archive.infolist()) > 2.5 * GIB
    message, peak = _refusal(path, max_gib=1)
    assert "holds 2.54 GiB of arrays once decompressed (x (41943040, 1, 8, 8) uint8, y (41943040,) uint8)" in message
    assert "the limit of 1 GiB (data.max_gib=1)" in message
    assert peak < 10 * MIB  # decompressing x alone would allocate 2.5 GiB


def test_a_deflated_pt_is_refused_by_its_record_sizes_before_loading(tmp_path: Path, no_torch_load: None) -> None:
    """``torch.load`` inflates deflated zip records, so a ``.pt`` can be a deflate bomb too."""
    plain = tmp_path / "plain.pt"
    torch.save({"x": torch.zeros(8 * MIB, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int64)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    assert (tmp_path / "bomb.pt").stat().st_size < 64 * 1024
    message, peak = _refusal(tmp_path / "bomb.pt", max_gib=0.001)
    assert "holds 8 MiB of records once decompressed" in message and "(data.max_gib=0.001)" in message
    assert peak < MIB


def test_object_arrays_are_refused_from_the_header(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", x=np.array([object()] * 4, dtype=object), y=np.zeros(4, dtype=int))
    message, _ = _refusal(tmp_path / "o.npz")
    assert "could not be read safely: x has dtype object (Python objects, which are never unpickled here)" in message


def test_keys_other_than_the_arrays_are_not_read(tmp_path: Path) -> None:
    x, y = _labelled()
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy(), notes=np.array([object()], dtype=object))
    assert TensorDataModule(tmp_path / "d.npz").num_classes == 3


@pytest.mark.parametrize("bad", [0, -1, "lots", True, float("nan"), float("inf")])
def test_bad_max_gib_is_one_line_naming_the_value_and_choices(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match=r"max_gib must be a positive number of GiB .* or null/auto") as info:
        TensorDataModule(tmp_path / "never_read.npz", max_gib=bad)  # refused before the path is looked at
    assert f"got {bad!r}" in str(info.value)


def test_max_gib_auto_is_a_quarter_of_the_memory() -> None:
    quarter = machine_memory() / 4 / GIB
    assert resolve_max_gib(None) == resolve_max_gib("auto") == pytest.approx(quarter)
    assert 0 < machine_memory() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert resolve_max_gib(2) == 2.0


def test_the_app_reports_bad_limits_as_one_line_config_errors(tmp_path: Path) -> None:
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        tensors = compose("train", overrides=["data=tensors", f"data.path={tmp_path / 'd.npz'}", "data.max_gib=abc"])
        folder = compose("train", overrides=["data=imagefolder", f"data.root={tmp_path}", "data.max_files=0"])
        defaults = compose("train", overrides=["data=imagefolder", f"data.root={tmp_path}"])
    assert defaults.data.max_files == DEFAULT_MAX_FILES and tensors.data.max_gib == "abc"
    with pytest.raises(ConfigError, match=r"^data(=\w+)?: max_gib must be a positive number .*got 'abc'$"):
        build_datamodule(tensors)
    with pytest.raises(ConfigError, match=r"^data(=\w+)?: max_files must be an integer >= 1 .*got 0$"):
        build_datamodule(folder)


# -- image folders --------------------------------------------------------------------------------------------
def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), "L").save(path)


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 6) -> Path:
    for name in classes:
        for i in range(n):
            _png(root / "train" / name / f"{i}.png", value=i)
    return root


def _small(root: Path, **kwargs: object) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, val_fraction=0.25, test_fraction=0.25, num_workers=0, **kwargs)


def test_a_symlink_loop_is_refused(tmp_path: Path, listings: list[str]) -> None:
    root = write_symlink_loop(tmp_path / "loop")  # train/a/l1 -> ., train/a/l2 -> ..
    message, _ = _refusal(root, ImageFolderDataModule)
    assert f"'{root / 'train' / 'a' / 'l1'}' is a symlink back to '{root / 'train' / 'a'}'" in message
    assert "a symlink loop" in message and len(listings) <= 5  # root, train, a: the loop is refused on sight


def test_a_symlink_to_an_ancestor_is_a_loop(tmp_path: Path) -> None:
    root = _folder(tmp_path / "root")
    os.symlink("../..", root / "train" / "b" / "up")  # -> the root itself
    message, _ = _refusal(root, ImageFolderDataModule)
    assert f"'{root / 'train' / 'b' / 'up'}' is a symlink back to '{root}'" in message and "loop" in message


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = write_symlink_escape(tmp_path / "root", tmp_path / "elsewhere")  # train/b -> ../../elsewhere
    message, _ = _refusal(root, ImageFolderDataModule)
    assert f"'{root / 'train' / 'b'}' is a symlink to '{tmp_path / 'elsewhere'}', outside the image folder" in message
    assert "followed only inside data.root" in message


def test_a_symlinked_split_folder_out_of_the_root_is_refused(tmp_path: Path) -> None:
    _folder(tmp_path / "elsewhere")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere" / "train", tmp_path / "root" / "train")
    message, _ = _refusal(tmp_path / "root", ImageFolderDataModule)
    assert "outside the image folder" in message


def test_symlinks_inside_the_root_are_followed(tmp_path: Path) -> None:
    root = _folder(tmp_path / "root", classes=("a",))
    for i in range(6):
        _png(root / "shared" / "b" / f"{i}.png", value=100 + i)
    os.symlink("../shared/b", root / "train" / "b")  # a class folder kept elsewhere inside the root
    os.symlink("../../shared/b/0.png", root / "train" / "a" / "linked.png")  # a file symlink
    dm = _small(root)
    assert dm.classes == ["a", "b"] and sum(dm.split_sizes().values()) == 13
    assert (str(root / "train" / "b" / "0.png"), 1) in dm._folders["train"].samples


def test_two_ways_into_one_folder_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "root")
    os.symlink("a", root / "train" / "c")  # the images of a again, labelled c
    message, _ = _refusal(root, ImageFolderDataModule)
    assert f"'{root / 'train' / 'c'}' leads to '{root / 'train' / 'a'}', which image folder" in message
    assert "already reaches another way" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_a_fifo_with_an_image_name_is_refused_without_opening_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "root")
    fifo = root / "train" / "a" / "wait.png"
    os.mkfifo(fifo)  # opening it would block until a writer came
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so that an open for reading fails this test, not hangs it
    opened: list[str] = []
    image_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or image_open(path, *a, **k))
    try:
        message, _ = _refusal(root, ImageFolderDataModule)
    finally:
        os.close(writer)
    assert f"'{fifo}' in image folder" in message and "not a regular file" in message
    assert str(fifo) not in opened


def test_max_files_caps_the_walk_while_walking(tmp_path: Path) -> None:
    root = _folder(tmp_path / "root")  # 2 class folders + 12 images = 14 entries
    assert sum(_small(root, max_files=14).split_sizes().values()) == 12
    message, _ = _refusal(root, ImageFolderDataModule, max_files=13)
    assert "has more than 13 files and folders" in message and "data.max_files=13" in message
    for i in range(200):  # non-images count too
        (root / "train" / "b" / f"{i}.txt").touch()
    walk = FolderWalk(root, max_files=20)
    walk.new_split()
    with pytest.raises(ValueError, match="more than 20 files and folders"):
        walk.images(str(root / "train"))
    assert walk.listed == 21  # stopped at the cap, not after listing everything


@pytest.mark.parametrize("bad", [0, -3, "many", True, 2.5, None])
def test_bad_max_files_is_one_line_naming_the_value(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match=r"^max_files must be an integer >= 1 \(default 2000000\), got ") as info:
        ImageFolderDataModule(tmp_path, max_files=bad)
    assert str(info.value).endswith(repr(bad))


def test_the_walk_lists_what_torchvision_lists_in_the_same_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ("a/1.png", "a/0.PNG", "a/sub/2.jpg", "a/sub/deeper/3.png", "a/.hidden.png", "a/z/4.png",
                "b/x.png", "b/.h/5.png", "b/y.bmp"):
        _png(root / "train" / rel)
    (root / "train" / "a" / "notes.txt").touch()
    expected = make_dataset(str(root / "train"), {"a": 0, "b": 1}, is_valid_file=is_image_file)
    walk = FolderWalk(root, max_files=100)
    walk.new_split()
    listed = []
    for label, name in enumerate(("a", "b")):
        walk.enter(str(root / "train" / name), str(root / "train"), link=False)
        listed += [(path, label) for path in walk.images(os.path.join(root / "train", name))]
    assert listed == expected
