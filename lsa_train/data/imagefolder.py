"""The user's own images in torchvision's ``ImageFolder`` layout: ``<root>/train/<class>/<image>``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from lsa_train.data.base import LSADataModule, log_on_rank_zero
from lsa_train.data.limits import DEFAULT_MAX_FILES, check_max_files
from lsa_train.data.splits import TransformSubset, train_val_test_indices
from lsa_train.data.statistics import Moments, given_statistics

#: Split folders under ``root``; ``train`` is required, the others are optional.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: PIL modes read as one grey channel; every other mode is converted to RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})

#: What PIL raises for a file it cannot identify or decode.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

#: Class names listed in the log line of :class:`ImageFolderDataModule` (then ``...``).
_LOGGED_CLASSES = 20

#: Largest value of a signed 32-bit integer: the range of PIL's mode ``I`` read from 32-bit files.
_INT32_MAX = 2**31 - 1

log = logging.getLogger(__name__)


class ImageValuesError(ValueError):
    """A readable grey image whose values have no ``[0, 1]`` reading (negative integers, floats outside)."""


def is_image_file(path: str) -> bool:
    """An image extension (any case) and not a hidden file (e.g. macOS ``._name.png`` resource forks)."""
    return not os.path.basename(path).startswith(".") and path.lower().endswith(IMG_EXTENSIONS)


def _is_grey(mode: str) -> bool:
    return mode in _GREY_MODES or mode.startswith("I;")


def is_high_depth(mode: str) -> bool:
    """PIL modes of grey images with more than 8 bits: ``I;16*`` (16-bit), ``I`` (32-bit int), ``F`` (float)."""
    return mode in ("I", "F") or mode.startswith("I;16")


def integer_range(image: Image.Image) -> int:
    """The value that maps to 1.0 for an integer grey image (modes ``I;16*`` and ``I``).

    ``I;16*``: 65535. ``I`` holds 32-bit signed integers, but PIL also reads 16-bit files into it
    (PGM/PPM with a maxval above 255, scaled by PIL to 0..65535; PNG in older Pillow versions), so
    the range follows the file's bit depth: 65535 for those, ``2**bits - 1`` for a TIFF of at most 16
    bits per sample, and ``2**31 - 1`` (the mode's range) for 32-bit files.
    """
    if image.mode.startswith("I;16"):
        return 65535
    if image.format in ("PNG", "PPM"):
        return 65535
    bits = None
    if image.format == "TIFF":
        sample_bits = getattr(image, "tag_v2", {}).get(258)  # BitsPerSample
        bits = int(sample_bits[0] if isinstance(sample_bits, tuple) else sample_bits) if sample_bits else None
    return 2**bits - 1 if bits is not None and bits <= 16 else _INT32_MAX


def unit_pixels(image: Image.Image, path: str) -> np.ndarray:
    """A high-depth grey image as float32 ``(H, W)`` in ``[0, 1]``: integers divided by their range
    (:func:`integer_range`), floats (mode ``F``) as they are.

    Raises:
        ImageValuesError: Negative integers, or float values outside ``[0, 1]`` or not finite (one line
            naming the path; such images have no range that says what 1.0 is).
    """
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise ImageValuesError(f"float image '{path}' has NaN or infinite pixels")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise ImageValuesError(
                f"float image '{path}' has values in [{low:.4g}, {high:.4g}]; float (mode F) images are read as "
                "they are and must lie in [0, 1]: scale them, or save 8-bit or 16-bit images"
            )
        return pixels
    values = np.asarray(image).astype(np.float64)
    if values.size and float(values.min()) < 0:
        raise ImageValuesError(
            f"integer image '{path}' (mode {image.mode}) has negative values (min {float(values.min()):g}); "
            "grey images must be unsigned: save 8-bit or 16-bit images, or floats in [0, 1]"
        )
    return (values / integer_range(image)).astype(np.float32)


class ImageLoader:
    """Opens an image file as a PIL image in ``mode`` (``"L"`` or ``"RGB"``); picklable for workers.

    8-bit images are converted with PIL (``ToTensor`` then divides by 255). 16-bit, 32-bit and float
    grey images (:func:`is_high_depth`) are scaled to ``[0, 1]`` by :func:`unit_pixels`: in ``"L"`` mode
    they become float images (mode ``F``, which ``ToTensor`` keeps as they are, so no precision is
    lost); in ``"RGB"`` mode they are rounded to 8 bits and replicated to three channels.

    Raises:
        ValueError: The file is not a readable image, or its values have no [0, 1] reading (one line
            naming the path).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                if not is_high_depth(image.mode):
                    return image.convert(self.mode)
                pixels = unit_pixels(image, path)
        except ImageValuesError:
            raise
        except _IMAGE_ERRORS as err:
            raise ValueError(f"unreadable image '{path}': {err}") from err
        if self.mode == "L":
            return Image.fromarray(pixels, mode="F")
        return Image.fromarray(np.rint(pixels * 255.0).astype(np.uint8), mode="L").convert(self.mode)


def _inode(path: str) -> tuple[int, int]:
    """``(device, inode)`` of what ``path`` leads to: one key per directory, whichever way it is reached."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


class FolderWalk:
    """Lists an image folder without following it out of ``root`` or round a loop, within ``max_files`` entries.

    Symlink policy (a folder handed over by someone else is data): a symlink to a directory is followed
    only when its target lies inside ``root`` (resolved) and has not been walked yet; one that leaves
    ``root``, one that points back to a folder above it (a loop) and a second way into a folder already
    walked are refused. Symlinks to files are followed (each is one file: ``ImageFolderDataModule`` decodes
    every image once with PIL's decompression-bomb limit), but the target must be a regular file (a FIFO
    or device, which could block or never end, is refused, as is a broken link with an image name).
    Every directory entry listed (file or folder, image or not) counts towards ``max_files``; the walk
    stops with an error at the cap instead of listing everything first.

    Args:
        root: The image folder (``data.root``); the user's own path, so it may itself be a symlink.
        max_files: Most directory entries to list below ``root``.
    """

    def __init__(self, root: Path, max_files: int) -> None:
        self.root = root
        self.max_files = max_files
        self.listed = 0
        self._real_root = root.resolve()
        self._walked: set[tuple[int, int]] = set()
        self._subfolders: dict[str, list[str]] = {}

    def new_split(self) -> None:
        """Starts a split folder: ``train/``, ``val/`` and ``test/`` may each reach the same folders once."""
        self._walked = {_inode(str(self.root))}

    def entries(self, folder: str) -> list[os.DirEntry[str]]:
        """The entries of ``folder``, counted towards ``max_files``."""
        found = []
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    self.listed += 1
                    if self.listed > self.max_files:
                        raise ValueError(
                            f"image folder '{self.root}' has more than {self.max_files} files and folders (reached "
                            f"at '{entry.path}'); data.max_files={self.max_files} bounds the walk: raise it if "
                            "the folder really is that large"
                        )
                    found.append(entry)
        except OSError as err:
            raise ValueError(f"folder '{folder}' of image folder '{self.root}' cannot be listed ({err})") from err
        return found

    def enter(self, folder: str, parent: str | None = None, link: bool = True) -> None:
        """Checks that ``folder`` (an entry of ``parent``, or a split folder) may be walked, and marks it walked.

        Args:
            folder: The directory's path as listed (through any symlinks).
            parent: The folder that lists it (``None`` for a split folder).
            link: Whether ``folder`` may be a symlink (its target is then checked to lie inside ``root``).

        Raises:
            ValueError: ``folder`` resolves outside ``root``, back to a folder above it, or to one already walked.
        """
        real = Path(os.path.realpath(folder)) if link else None
        if real is not None and not real.is_relative_to(self._real_root):
            raise ValueError(
                f"'{folder}' is a symlink to '{real}', outside the image folder '{self.root}'; symlinked folders "
                "are followed only inside data.root: copy the images in, or point data.root at a folder holding both"
            )
        key = _inode(folder)
        if key in self._walked:
            real = real or Path(os.path.realpath(folder))
            if parent is not None and Path(os.path.realpath(parent)).is_relative_to(real):
                raise ValueError(
                    f"'{folder}' is a symlink back to '{real}', which holds it: a symlink loop in image folder "
                    f"'{self.root}'; remove the link"
                )
            raise ValueError(
                f"'{folder}' leads to '{real}', which image folder '{self.root}' already reaches another way "
                "(two symlinks to one folder); each folder of images may be reached once: remove the extra link"
            )
        self._walked.add(key)

    def subfolders(self, folder: str) -> list[str]:
        """Names of the directories in ``folder`` (symlinks included, hidden ones skipped), sorted; each
        folder is listed (and counted) once."""
        if folder not in self._subfolders:
            entries = self.entries(folder)
            self._subfolders[folder] = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        return self._subfolders[folder]

    def images(self, folder: str) -> list[str]:
        """Paths of the image files below ``folder`` (entered already), in ``ImageFolder``'s order: by folder
        path, then by file name; folder symlinks are checked by :meth:`enter` before they are walked.

        Raises:
            ValueError: A refused symlink (see :meth:`enter`), a non-regular file with an image name, a
                folder that cannot be listed, or more than ``max_files`` entries.
        """
        found: list[tuple[str, list[str]]] = []
        pending = [folder]
        while pending:
            current = pending.pop()
            files = []
            for entry in self.entries(current):
                if entry.is_dir():
                    self.enter(entry.path, current, link=entry.is_symlink())
                    pending.append(entry.path)
                elif is_image_file(entry.path):
                    if not entry.is_file():
                        raise ValueError(
                            f"'{entry.path}' in image folder '{self.root}' has an image name but is not a regular "
                            "file (a FIFO, device, socket or broken symlink); remove it"
                        )
                    files.append(entry.path)
            found.append((current, sorted(files)))
        return [path for _, files in sorted(found) for path in files]


class ClassImageFolder(datasets.ImageFolder):
    """``ImageFolder`` with a given class list, so that ``val/`` and ``test/`` share ``train/``'s labels, and
    given samples (listed by :class:`FolderWalk`: torchvision's own walk follows every symlink).

    Class folders missing from ``root`` are allowed (they give no samples).

    Args:
        root: The split folder.
        classes: Class names; ``classes[k]`` has label ``k``.
        loader: Opens one image file.
        samples: ``(path, label)`` pairs.
    """

    def __init__(
        self, root: Path, classes: Sequence[str], loader: ImageLoader, samples: Sequence[tuple[str, int]]
    ) -> None:
        self._classes = list(classes)
        self._given_samples = list(samples)
        super().__init__(str(root), loader=loader, is_valid_file=is_image_file, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return self._classes, {name: index for index, name in enumerate(self._classes)}

    def make_dataset(self, *args: Any, **kwargs: Any) -> list[tuple[str, int]]:  # type: ignore[override]
        """The given samples (nothing is listed again)."""
        return list(self._given_samples)


class ImageFolderDataModule(LSADataModule):
    """Images from ``<root>/train/<class>/*``, optional ``val/`` and ``test/`` folders of the same classes.

    Classes are the sub-folders of ``train/`` in sorted order (hidden ones skipped), labels
    ``0..K-1``; files with torchvision's image extensions count (``.jpg .jpeg .png .ppm .bmp .pgm
    .tif .tiff .webp``, any case; hidden files skipped). ``val/`` and ``test/`` may lack classes but
    not add any. A missing ``val/`` is split off ``train/`` (``val_fraction``), a missing ``test/``
    too (``test_fraction``, split first), seeded and stratified by class.

    Inputs are float32 ``(C, S, S)`` in ``[0, 1]`` (``ToTensor``). ``C`` comes from the images: 1 when
    every image is grey (PIL modes ``1``, ``L``, ``I;16``, ``I``, ``F``), else 3 (all converted to RGB);
    ``channels`` overrides it. 8-bit images are divided by 255; 16-bit grey images (``I;16``, and
    16-bit PGM files, which PIL reads as ``I``) by 65535; 32-bit integer images (``I``) by ``2**31 - 1``
    (negative values are refused); float images (``F``, e.g. TIFF) are taken as they are and must lie
    in ``[0, 1]`` (see :func:`unit_pixels`). With ``input_size`` each image is resized (shorter side to ``S``,
    antialiased) and center-cropped to ``S x S``; without it all images must share one size
    ``(H, W)``. ``mean``/``std`` (per channel, over all pixels of the training split after resizing,
    no augmentation) are computed in ``__init__`` unless given; a constant channel gets std 1.

    Everything the app needs before training is read in ``__init__``: the folder layout, the class
    list, every image of every split (decoded once, so that a truncated file fails here, even with
    ``mean``/``std`` given) and, unless ``mean``/``std`` are given, the training images' statistics.
    Bad data raises there, in one line naming the path. The classes found and the images of each
    split are logged (rank 0).

    A folder handed over by someone else is data, and the walk over it is bounded (:class:`FolderWalk`):
    symlinked folders are followed only inside ``root`` and never round a loop or into a folder reached
    another way, image names must be regular files, and at most ``max_files`` entries are listed.

    Args:
        root: Folder holding ``train/`` (and optionally ``val/``, ``test/``); relative to the working directory.
        input_size: Square side ``S`` in pixels, or ``None`` to keep the (common) image size.
        channels: ``1`` or ``3`` to force grey or RGB, ``None`` to decide from the images.
        augment: Training augmentation: random crop of the ``crop_padding``-padded image plus
            horizontal flip (as for CIFAR).
        crop_padding: Zero padding of the random crop in pixels (0: flips only).
        val_fraction: Validation fraction of the non-test training images (when there is no ``val/``).
        test_fraction: Test fraction of the training images (when there is no ``test/``).
        mean: Per-channel mean in ``[0, 1]`` units (give with ``std``); skips the statistics pass.
        std: Per-channel standard deviation, all ``> 0``.
        max_files: Most directory entries (files and folders, images or not) listed below ``root``, in all
            splits together; the walk stops with an error at the cap.
        **kwargs: Common arguments of :class:`~lsa_train.data.base.LSADataModule`.

    Attributes:
        classes: Class folder names; ``classes[k]`` has label ``k`` (also :attr:`class_names`).
        split_sources: For each split, ``"folder"`` or ``"train"`` (split off ``train/``).

    Raises:
        FileNotFoundError: ``root`` or ``root/train`` is not a directory.
        ValueError: A bad argument, more than ``max_files`` entries, a folder symlink out of ``root``, round a
            loop or into a folder reached another way, an image name that is not a regular file (FIFO,
            device, broken link), fewer than 2 class folders, a class folder without images, a class
            folder in ``val/``/``test/`` that ``train/`` lacks, an unreadable (e.g. truncated) image, a float
            image outside ``[0, 1]`` or an integer image with negative values, images of
            different sizes without ``input_size``, or an impossible stratified split.
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        input_size: int | None = None,
        channels: int | None = None,
        augment: bool = True,
        crop_padding: int = 4,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        max_files: int = DEFAULT_MAX_FILES,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.max_files = check_max_files(max_files)
        if input_size is not None and (isinstance(input_size, bool) or int(input_size) != input_size or input_size < 1):
            raise ValueError(f"input_size must be a positive integer or None, got {input_size!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None (from the images), got {channels!r}")
        if not isinstance(augment, bool):  # bool('false') is True: a string would switch it on silently
            raise ValueError(f"augment must be true or false, got {augment!r}")
        if isinstance(crop_padding, bool) or int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer >= 0, got {crop_padding!r}")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.root = Path(root).expanduser().absolute()
        self.input_size = None if input_size is None else int(input_size)
        self.augment = bool(augment)
        self.crop_padding = int(crop_padding)
        self.test_fraction = float(test_fraction)

        self._walk = FolderWalk(self.root, self.max_files)
        self.classes = self._find_classes()
        self.num_classes = len(self.classes)
        folders = self._scan_folders()
        modes, sizes = self._read_headers(folders)
        auto_channels = 1 if all(_is_grey(mode) for mode in modes) else 3
        num_channels = auto_channels if channels is None else int(channels)
        self._image_loader = ImageLoader("L" if num_channels == 1 else "RGB")
        for folder in folders.values():
            folder.loader = self._image_loader
        self.input_shape = (num_channels, *self._image_size(sizes))
        self._folders = folders
        self._indices = self._split(folders)
        self.split_sources = {split: "folder" if split in folders else "train" for split in SPLITS}
        self._log_layout()
        self.mean, self.std = self._statistics(mean, std)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class folder names: ``class_names[k]`` has label ``k``."""
        return tuple(self.classes)

    def _log_layout(self) -> None:
        """One log line: the classes found and the images of each split, with where each split comes from."""
        shown = ", ".join(self.classes[:_LOGGED_CLASSES])
        if len(self.classes) > _LOGGED_CLASSES:
            shown += ", ..."
        sizes = self.split_sizes()
        splits = ", ".join(
            f"{split} {sizes[split]}" + ("" if self.split_sources[split] == "folder" else " (split off train/)")
            for split in SPLITS
        )
        log_on_rank_zero(log, "image folder '%s': %d classes (%s); images per split: %s", self.root,
                         self.num_classes, shown, splits)

    # -- layout -----------------------------------------------------------------------------
    def _find_classes(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder '{self.root}' does not exist or is not a directory")
        train = self.root / "train"
        if not train.is_dir():
            raise FileNotFoundError(
                f"image folder '{self.root}' has no 'train' directory (expected {train}{os.sep}<class>{os.sep}<image>)"
            )
        self._walk.new_split()
        self._walk.enter(str(train))
        classes = self._walk.subfolders(str(train))
        if not classes:
            raise ValueError(f"'{train}' has no class folders (expected {train}{os.sep}<class>{os.sep}<image>)")
        if len(classes) < 2:
            raise ValueError(f"'{train}' has one class folder ({classes[0]!r}); a classifier needs at least 2")
        return classes

    def _scan_folders(self) -> dict[str, ClassImageFolder]:
        """The present split folders as ``ImageFolder`` datasets (PIL images, no transform yet), listed by
        :class:`FolderWalk` (symlinks checked, at most ``max_files`` entries)."""
        folders: dict[str, ClassImageFolder] = {}
        for split in SPLITS:
            path = self.root / split
            if split != "train" and not path.is_dir():
                continue
            self._walk.new_split()
            self._walk.enter(str(path))
            present = self._walk.subfolders(str(path))
            extra = sorted(set(present) - set(self.classes))
            if extra:
                raise ValueError(
                    f"'{path}' has class folders that '{self.root / 'train'}' lacks: {extra[:5]} "
                    f"(train classes: {self.classes[:10]}{' ...' if len(self.classes) > 10 else ''})"
                )
            samples = []
            for label, name in enumerate(self.classes):
                if name in present:
                    class_folder = os.path.join(path, name)
                    self._walk.enter(class_folder, str(path), link=os.path.islink(class_folder))
                    samples += [(image, label) for image in self._walk.images(class_folder)]
            folder = ClassImageFolder(path, self.classes, ImageLoader("RGB"), samples)
            counts = np.bincount(np.asarray(folder.targets, dtype=np.int64), minlength=self.num_classes)
            empty = [name for name, count in zip(self.classes, counts, strict=True) if count == 0 and name in present]
            if empty:
                raise ValueError(
                    f"class folder '{path / empty[0]}' has no images (extensions: {' '.join(IMG_EXTENSIONS)})"
                )
            if not folder.samples:
                raise ValueError(f"'{path}' has no images in its class folders")
            folders[split] = folder
        return folders

    @staticmethod
    def _read_headers(folders: dict[str, ClassImageFolder]) -> tuple[set[str], dict[tuple[int, int], str]]:
        """Every image's PIL mode and size; one example path per ``(H, W)``.

        Every file of every split is also decoded once (JPEGs at 1/8 scale, which still reads all of
        the file), so that a truncated or corrupt image fails here, not in the middle of training; the
        values of 16-bit, 32-bit and float grey images are checked as :func:`unit_pixels` reads them.
        """
        modes: set[str] = set()
        sizes: dict[tuple[int, int], str] = {}
        for folder in folders.values():
            for path, _ in folder.samples:
                try:
                    with Image.open(path) as image:
                        modes.add(image.mode)
                        sizes.setdefault((image.height, image.width), path)
                        if is_high_depth(image.mode):
                            unit_pixels(image, path)
                        else:
                            image.draft(image.mode, (1, 1))  # JPEG: decode at the smallest scale
                            image.load()
                except ImageValuesError:
                    raise
                except _IMAGE_ERRORS as err:
                    raise ValueError(f"unreadable image '{path}': {err}") from err
        return modes, sizes

    def _image_size(self, sizes: dict[tuple[int, int], str]) -> tuple[int, int]:
        if self.input_size is not None:
            return self.input_size, self.input_size
        if len(sizes) > 1:
            (a, path_a), (b, path_b) = list(sizes.items())[:2]
            raise ValueError(
                f"images in '{self.root}' differ in size ({a[0]}x{a[1]} '{path_a}', {b[0]}x{b[1]} '{path_b}'); "
                "set input_size to resize and center-crop them to a square side"
            )
        return next(iter(sizes))

    def _split(self, folders: dict[str, ClassImageFolder]) -> dict[str, tuple[str, np.ndarray]]:
        """For each split, the folder it reads and its positions in that folder."""
        train = folders["train"]
        labels = np.asarray(train.targets, dtype=np.int64)
        train_pos, val_pos, test_pos = train_val_test_indices(
            labels,
            val_fraction=None if "val" in folders else self.val_fraction,
            test_fraction=None if "test" in folders else self.test_fraction,
            seed=self.seed,
            source=f"'{self.root / 'train'}'",
        )
        indices = {"train": ("train", train_pos), "val": ("train", val_pos), "test": ("train", test_pos)}
        for split in ("val", "test"):
            if split in folders:
                indices[split] = (split, np.arange(len(folders[split])))
        return indices

    # -- statistics ---------------------------------------------------------------------------
    def _statistics(
        self, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        given = given_statistics(mean, std, self.input_shape[0], "channel")
        if given is not None:
            return given
        moments = Moments(self.input_shape[0])
        train = self._dataset("train", self.eval_transform())
        for index in range(len(train)):  # type: ignore[arg-type]
            moments.add(train[index][0], channel_dim=0)
        return moments.result()

    # -- transforms and datasets --------------------------------------------------------------
    def _resize_steps(self) -> list[Any]:
        if self.input_size is None:
            return []
        return [transforms.Resize(self.input_size, antialias=True), transforms.CenterCrop(self.input_size)]

    def eval_transform(self) -> transforms.Compose:
        """Resize and center-crop (if ``input_size``), then ``ToTensor``: float32 ``(C, S, S)`` in ``[0, 1]``."""
        return transforms.Compose([*self._resize_steps(), transforms.ToTensor()])

    def train_transform(self) -> transforms.Compose:
        """As :meth:`eval_transform`, with the random crop and flip before ``ToTensor`` when ``augment``."""
        steps = self._resize_steps()
        if self.augment:
            if self.crop_padding:
                steps.append(transforms.RandomCrop(self.input_shape[1:], padding=self.crop_padding))
            steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose([*steps, transforms.ToTensor()])

    def _dataset(self, split: str, transform: transforms.Compose) -> Dataset:
        folder, positions = self._indices[split]
        return TransformSubset(self._folders[folder], positions, transform)

    def _build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        return (
            self._dataset("train", self.train_transform()),
            self._dataset("val", self.eval_transform()),
            self._dataset("test", self.eval_transform()),
        )

    def split_sizes(self) -> dict[str, int]:
        """Number of images in each split (known before :meth:`setup`)."""
        return {split: len(positions) for split, (_, positions) in self._indices.items()}

    def check_available(self) -> None:
        """Re-checks, cheaply, that every listed image file still exists.

        Raises:
            FileNotFoundError: One line naming the first missing file.
        """
        for folder in self._folders.values():
            for path, _ in folder.samples:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"image '{path}' of '{self.root}' no longer exists")
