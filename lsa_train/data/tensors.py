"""The user's own arrays from one ``.pt`` or ``.npz`` file: ``x``, ``y`` and optionally ``x_test``, ``y_test``."""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lsa_train.data.base import LSADataModule
from lsa_train.data.limits import GIB, resolve_max_gib, size_text
from lsa_train.data.splits import train_val_test_indices
from lsa_train.data.statistics import Moments, given_statistics
from lsa_train.trust import UntrustedFileError, read_torch_file

#: File suffixes read by :class:`TensorDataModule`.
SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".npz")

#: Array keys: inputs and labels, and the optional separate test split.
KEYS: tuple[str, ...] = ("x", "y", "x_test", "y_test")

#: Axis orders of 4-D inputs (``layout``): ``auto`` is NCHW, refusing arrays that look channels-last.
LAYOUTS: tuple[str, ...] = ("auto", "nchw", "nhwc")

#: ``auto`` layout: a 4-D array with more channels than this and a width of at most this looks
#: channels-last (``(N, 32, 32, 3)`` is not 32 channels of 32x3 images).
_MAX_PLAIN_CHANNELS = 4

#: Samples per chunk of the statistics pass (bounds the float64 copy of uint8 data).
_CHUNK = 4096


def _reason(err: BaseException) -> str:
    """The informative line of a load error (``torch.load``'s weights-only errors span many lines)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        found = unsafe.group(1)
        return f"it holds an object of class {found}, which weights_only=True does not rebuild; save a dict of tensors"
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class _Refused(ValueError):
    """A tensor file refused by one of this module's checks (the message is complete: not re-worded)."""


def _limit_text(max_gib: float | str | None, limit_gib: float) -> str:
    """How messages name the size limit: ``the limit of 1 GiB (data.max_gib=1)``."""
    if max_gib is None or isinstance(max_gib, str):
        return f"the limit of {limit_gib:.3g} GiB (data.max_gib=auto: a quarter of this machine's memory)"
    return f"the limit of {max_gib:g} GiB (data.max_gib={max_gib:g})"


def _too_large(path: Path, nbytes: int, what: str, max_gib: float | str | None, limit_gib: float) -> _Refused:
    return _Refused(
        f"tensor file '{path}' holds {size_text(nbytes)} of {what}, more than {_limit_text(max_gib, limit_gib)}; "
        "raise data.max_gib if you trust the file and this machine has the memory (about twice that is held "
        "while the arrays are split)"
    )


def _npy_header(fp: IO[bytes], key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The ``(shape, dtype)`` of the ``.npy`` stream ``fp`` from its header alone (format 1.0 or 2.0)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:  # 3.0: only for structured dtypes with non-Latin-1 field names
        raise ValueError(f"{key} has .npy format version {version[0]}.{version[1]}; store plain number arrays")
    return tuple(int(s) for s in shape), dtype


def _read_npz(path: Path, max_gib: float | str | None, limit_gib: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays of ``KEYS`` in the ``.npz`` file and the names of all its arrays.

    Each array's ``.npy`` header is read first, and the file is refused by the headers' shapes and dtypes
    (numbers only, total ``shape x itemsize`` at most ``limit_gib``) before any array data is decompressed.
    """
    with zipfile.ZipFile(path) as archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for key in KEYS:
            if key in members:
                with archive.open(members[key]) as member:
                    headers[key] = _npy_header(member, key)
        for key, (_, dtype) in headers.items():
            if dtype.kind not in "biuf":
                objects = " (Python objects, which are never unpickled here)" if dtype.hasobject else ""
                raise _Refused(f"tensor file '{path}' could not be read safely: {key} has dtype {dtype}{objects}; "
                               "expected numbers")
        nbytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
        if nbytes > limit_gib * GIB:
            shapes = ", ".join(f"{key} {shape} {dtype}" for key, (shape, dtype) in headers.items())
            raise _too_large(path, nbytes, f"arrays once decompressed ({shapes})", max_gib, limit_gib)
        arrays = {}
        for key in headers:
            with archive.open(members[key]) as member:
                arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays, list(members)


def _torch_file_bytes(path: Path) -> int:
    """Bytes ``torch.load`` decodes from ``path``: the declared sizes of its zip records once decompressed
    (``torch.load`` inflates deflated records too), or the file's size for the legacy (not zip) format,
    whose storages are read from the file as they are."""
    if not zipfile.is_zipfile(path):
        return path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def _check_dense(path: Path, key: str, tensor: torch.Tensor) -> None:
    """Refuses an expanded or overlapping view: a stride-0 axis, or more value bytes than its storage holds
    (``torch.save`` keeps such a view's small storage; copying it materializes every value)."""
    needed = tensor.numel() * tensor.element_size()
    held = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
    zero_stride = any(stride == 0 and size > 1 for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    if zero_stride or needed > held:
        raise _Refused(
            f"tensor file '{path}': {key} is an expanded or overlapping view (shape {tuple(tensor.shape)}, strides "
            f"{tensor.stride()}) whose {size_text(needed)} of values lie in {size_text(held)} of storage; "
            f"save {key}.contiguous() so that the file holds its values"
        )


def load_arrays(path: Path, max_gib: float | str | None = None) -> dict[str, torch.Tensor]:
    """The arrays of ``KEYS`` present in a ``.pt``/``.pth`` (``torch.load(weights_only=True)``) or ``.npz`` file.

    Other keys are ignored (in a ``.npz`` file they are not read). Nothing in the file is executed:
    ``.pt`` files go through ``weights_only=True`` and ``.npz`` files are read with ``allow_pickle=False``.
    Reads are bounded by ``max_gib`` (GiB of decoded arrays) before they happen: a ``.npz`` file by its
    arrays' ``.npy`` headers (shape x itemsize; object dtypes refused), a ``.pt`` file by the decompressed
    sizes of its zip records (its size on disk for the legacy format). Expanded or overlapping tensors
    (a stride-0 axis, or more values than their storage holds) are refused as soon as they are loaded,
    before anything copies them.

    Args:
        path: The file.
        max_gib: Most GiB of decoded arrays; ``None``/``"auto"``: a quarter of the machine's memory.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: Unknown suffix, unreadable file, not a dict of arrays, ``x``/``y`` missing, more than
            ``max_gib``, an expanded tensor, or a non-number array.
    """
    limit_gib = resolve_max_gib(max_gib)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"tensor file '{path}' has suffix {path.suffix!r}; choose one of {list(SUFFIXES)}")
    try:
        if suffix == ".npz":
            content, names = _read_npz(path, max_gib, limit_gib)
        else:  # weights_only=True, TorchScript refused: lsa_train.trust
            nbytes = _torch_file_bytes(path)
            if nbytes > limit_gib * GIB:
                raise _too_large(path, nbytes, "records once decompressed", max_gib, limit_gib)
            content = read_torch_file(path, what="tensor file")
            names = list(map(str, content)) if isinstance(content, Mapping) else []
    except _Refused:
        raise
    except UntrustedFileError as err:  # a tensor file never needs unpickling: no trust switch here
        script = "it is a TorchScript archive, whose loading runs code; save a dict of tensors"
        reason = _reason(err.__cause__) if err.__cause__ is not None else script
        raise ValueError(f"tensor file '{path}' could not be read safely: {reason}") from err
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ValueError(f"tensor file '{path}' could not be read safely: {_reason(err)}") from err
    if not isinstance(content, Mapping):
        raise ValueError(f"tensor file '{path}' holds a {type(content).__name__}; expected a dict with keys x, y")
    missing = [key for key in ("x", "y") if key not in content]
    if missing:
        raise ValueError(
            f"tensor file '{path}' has no {' or '.join(repr(k) for k in missing)} "
            f"(keys: {sorted(names)[:10]}); expected x, y and optionally x_test, y_test"
        )
    if ("x_test" in content) != ("y_test" in content):
        raise ValueError(f"tensor file '{path}' has only one of 'x_test' and 'y_test'; give both or neither")
    arrays: dict[str, torch.Tensor] = {}
    for key in KEYS:
        if key not in content:
            continue
        value = content[key]
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise ValueError(f"tensor file '{path}': {key} has dtype {value.dtype}; expected numbers")
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"tensor file '{path}': {key} is a {type(value).__name__}; expected a tensor or array")
        _check_dense(path, key, value)
        arrays[key] = value.detach()
    nbytes = sum(a.numel() * a.element_size() for a in arrays.values())
    if nbytes > limit_gib * GIB:
        raise _too_large(path, nbytes, "arrays", max_gib, limit_gib)
    return arrays


def _is_class_count(value: object) -> bool:
    """An integer >= 2: a Python int, a numpy integer or a 0-d integer tensor (not a bool)."""
    if isinstance(value, bool | np.bool_):
        return False
    try:
        return int(value) == value and int(value) >= 2  # type: ignore[call-overload]
    except (TypeError, ValueError, RuntimeError):
        return False


def _few(values: Sequence[int], limit: int = 8) -> str:
    """``{3, 7}``, or the first ``limit`` values and how many there are."""
    shown = ", ".join(str(v) for v in values[:limit])
    return "{" + shown + (f", ... ({len(values)} in all)" if len(values) > limit else "") + "}"


class ScaledTensorDataset(Dataset):
    """``(x[i] as float32 in [0, 1], y[i])`` pairs; uint8 inputs are divided by 255 per item (kept small in memory).

    Args:
        x: ``(N, ...)`` uint8, or float32 already in ``[0, 1]``.
        y: ``(N,)`` int64 labels.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        return (x.float().div_(255.0) if x.dtype == torch.uint8 else x), self.y[index]


class TensorDataModule(LSADataModule):
    """Inputs ``x`` and labels ``y`` from one file, with an optional separate test split.

    ``x`` is ``(N, C, H, W)`` images or ``(N, D)`` vectors, uint8 (divided by 255) or float
    (must lie in ``[0, 1]``; stored as float32); ``y`` is ``(N,)`` integer class ids in ``[0, K)``.
    Channels-last images ``(N, H, W, C)`` are read with ``layout="nhwc"``; with the default
    ``"auto"`` an array that looks channels-last (more than 4 "channels" and a width of at most 4,
    e.g. ``(N, 32, 32, 3)``) is refused with the transpose to apply, and ``"nchw"`` takes any 4-D
    array as it is. Without ``num_classes`` the labels must be the ids ``0..K-1`` with every id
    present (labels ``{3, 7}`` are refused with how to remap them); a given ``num_classes`` allows
    ids without samples.
    ``x_test``/``y_test``, when present, are the test split (same per-sample shape); otherwise
    ``test_fraction`` of the samples is split off first. ``val_fraction`` of the rest is the
    validation split; both splits are seeded and stratified by class.

    ``mean``/``std`` default to the statistics of the training split, in ``[0, 1]`` units: per
    channel for images, per feature for vectors (a constant channel or feature gets std 1).

    All checks run in ``__init__`` (the file is read there), so bad data fails before training. A file
    from elsewhere is data: nothing in it is executed, and what it may make this program read is bounded
    (``max_gib``; expanded tensors, whose few stored values stand for many, are refused).

    Args:
        path: A ``.pt``/``.pth`` file (a dict of tensors, read with ``torch.load(weights_only=True)``)
            or a ``.npz`` file (read with ``allow_pickle=False``); relative to the working directory.
        num_classes: ``K`` (an int or a numpy/torch integer); ``None`` takes ``max(y) + 1`` over both
            splits, every id in ``0..K-1`` having at least one sample.
        val_fraction: Validation fraction of the non-test samples.
        test_fraction: Test fraction of the samples, used when the file has no ``x_test``.
        mean: Per-channel (images) or per-feature (vectors) mean, in ``[0, 1]`` units (give with ``std``).
        std: Matching standard deviations, all ``> 0``.
        layout: Axis order of 4-D inputs: ``"auto"`` (``(N, C, H, W)``, refusing arrays that look
            channels-last), ``"nchw"`` or ``"nhwc"`` (transposed to ``(N, C, H, W)`` on load).
        max_gib: Most GiB (2**30 bytes) of decoded arrays the file may hold (``x``, ``y``, ``x_test``,
            ``y_test``: numel x bytes per element), checked before they are read or decompressed (see
            :func:`load_arrays`); the module holds about twice this while splitting. ``None`` or ``"auto"``:
            a quarter of the machine's memory (the container's limit, where lower).
        **kwargs: Common arguments of :class:`~lsa_train.data.base.LSADataModule`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: A bad ``max_gib``, an unreadable file, arrays larger than ``max_gib``, an expanded or
            overlapping tensor, missing keys, bad shapes or dtypes, mismatched lengths,
            ``x`` outside ``[0, 1]``, channels-last images without ``layout="nhwc"``, labels outside
            ``[0, K)`` or (without ``num_classes``) not ``0..K-1``, or an impossible stratified split
            (one line naming the file).
    """

    name = "tensors"

    def __init__(
        self,
        path: str | os.PathLike[str],
        num_classes: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layout: str = "auto",
        max_gib: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        resolve_max_gib(max_gib)  # a bad value fails before the file is opened
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if num_classes is not None and not _is_class_count(num_classes):
            raise ValueError(f"num_classes must be an integer >= 2 or None (from the labels), got {num_classes!r}")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.path = Path(path).expanduser().absolute()
        self.test_fraction = float(test_fraction)
        self.layout = layout
        self.max_gib = max_gib
        arrays = load_arrays(self.path, max_gib)
        x, y = self._inputs(arrays["x"], "x"), self._labels(arrays["y"], "y", arrays["x"])
        test = None
        if "x_test" in arrays:
            x_test = self._inputs(arrays["x_test"], "x_test")
            if x_test.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"tensor file '{self.path}': x_test samples have shape {tuple(x_test.shape[1:])}, "
                    f"x samples {tuple(x.shape[1:])}"
                )
            test = (x_test, self._labels(arrays["y_test"], "y_test", arrays["x_test"]))
        self.num_classes = self._class_count(num_classes, y, None if test is None else test[1])
        self.input_shape = tuple(int(s) for s in x.shape[1:])
        train_pos, val_pos, test_pos = train_val_test_indices(
            y.numpy(),
            val_fraction=self.val_fraction,
            test_fraction=None if test is not None else self.test_fraction,
            seed=self.seed,
            source=f"tensor file '{self.path}'",
        )
        train_pos, val_pos, test_pos = (torch.as_tensor(p) for p in (train_pos, val_pos, test_pos))
        if test is None:
            test = (x[test_pos], y[test_pos])
        self._splits = {"train": (x[train_pos], y[train_pos]), "val": (x[val_pos], y[val_pos]), "test": test}
        self.mean, self.std = self._statistics(mean, std)

    # -- checks -------------------------------------------------------------------------------
    def _inputs(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """``x`` as uint8 or float32 ``(N, C, H, W)``/``(N, D)``, checked to lie in ``[0, 1]``."""
        where = f"tensor file '{self.path}'"
        if x.ndim not in (2, 4) or x.shape[0] == 0:
            raise ValueError(
                f"{where}: {key} has shape {tuple(x.shape)}; expected (N, C, H, W) images or (N, D) vectors, N >= 1"
            )
        x = self._channels_first(x, key)
        if x.dtype == torch.uint8:
            return x
        if not x.is_floating_point():
            raise ValueError(f"{where}: {key} has dtype {x.dtype}; expected float in [0, 1] or uint8 (0..255)")
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{where}: {key} has NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{where}: {key} has values outside [0, 1] (min {lo:.4g}, max {hi:.4g}); "
                "scale float inputs to [0, 1] or store uint8 (divided by 255)"
            )
        return x

    def _channels_first(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """``x`` in ``(N, C, H, W)`` order per :attr:`layout` (vectors pass through)."""
        where = f"tensor file '{self.path}'"
        shape = tuple(x.shape)
        if x.ndim == 2:
            if self.layout != "auto":
                raise ValueError(f"{where}: layout={self.layout!r} applies to 4-D images, but {key} has shape "
                                 f"{shape} (vectors); remove it (layout=auto)")
            return x
        if self.layout == "nhwc":
            return x.permute(0, 3, 1, 2).contiguous()
        if self.layout == "auto" and shape[1] > _MAX_PLAIN_CHANNELS and shape[3] <= _MAX_PLAIN_CHANNELS:
            raise ValueError(
                f"{where}: {key} has shape {shape}, which looks channels-last (N, H, W, C); store "
                f"{key}.transpose(0, 3, 1, 2) (numpy; torch: permute) or set layout=nhwc (data.layout=nhwc) to read "
                f"it as {shape[3]}-channel {shape[1]}x{shape[2]} images (layout=nchw: {shape[1]} channels of "
                f"{shape[2]}x{shape[3]})"
            )
        return x

    def _labels(self, y: torch.Tensor, key: str, x: torch.Tensor) -> torch.Tensor:
        where = f"tensor file '{self.path}'"
        if y.ndim != 1 or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise ValueError(
                f"{where}: {key} has shape {tuple(y.shape)} and dtype {y.dtype}; expected (N,) integer class ids"
            )
        x_key = "x" if key == "y" else "x_test"
        if len(y) != len(x):
            raise ValueError(f"{where}: mismatched lengths: {x_key} has {len(x)} samples, {key} has {len(y)}")
        return y.to(torch.int64)

    def _class_count(self, num_classes: int | None, y: torch.Tensor, y_test: torch.Tensor | None) -> int:
        labels = y if y_test is None else torch.cat([y, y_test])
        lo, hi = int(labels.min()), int(labels.max())
        k = hi + 1 if num_classes is None else int(num_classes)
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"tensor file '{self.path}': label {bad} outside [0, {k})"
                + ("" if num_classes is None else " (num_classes)")
            )
        if k < 2:
            raise ValueError(f"tensor file '{self.path}': labels give {k} class; need at least 2")
        if num_classes is None:
            present = torch.unique(labels)
            if len(present) < k:
                absent = sorted(set(range(k)) - set(present.tolist()))
                raise ValueError(
                    f"tensor file '{self.path}': the labels are not the class ids 0..{k - 1}: "
                    f"{len(present)} distinct labels {_few(present.tolist())}, no sample of "
                    f"{_few(absent)}; remap them to 0..{len(present) - 1} (y = np.unique(y, return_inverse=True)[1]) "
                    f"or set num_classes={k} (data.num_classes={k}) to keep these ids with empty classes"
                )
        return k

    def _statistics(
        self, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        unit = "channel" if len(self.input_shape) == 3 else "feature"
        given = given_statistics(mean, std, self.input_shape[0], unit)
        if given is not None:
            return given
        x = self._splits["train"][0]
        moments = Moments(self.input_shape[0])
        for start in range(0, len(x), _CHUNK):
            chunk = x[start : start + _CHUNK]
            moments.add(chunk.double() / 255.0 if x.dtype == torch.uint8 else chunk, channel_dim=1)
        return moments.result()

    # -- datasets -----------------------------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        """Number of samples in each split (known before :meth:`setup`)."""
        return {split: len(y) for split, (_, y) in self._splits.items()}

    def _build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        return tuple(ScaledTensorDataset(*self._splits[split]) for split in ("train", "val", "test"))  # type: ignore[return-value]
