"""The user's own arrays from one ``.pt`` or ``.npz`` file: ``x``, ``y`` and optionally ``x_test``, ``y_test``."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lsa_train.data.base import LSADataModule
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


def load_arrays(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of ``KEYS`` present in a ``.pt``/``.pth`` (``torch.load(weights_only=True)``) or ``.npz`` file.

    Other keys are ignored. Nothing in the file is executed: ``.pt`` files go through
    ``weights_only=True`` and ``.npz`` files are read with ``allow_pickle=False``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: Unknown suffix, unreadable file, not a dict of arrays, or ``x``/``y`` missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"tensor file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"tensor file '{path}' has suffix {path.suffix!r}; choose one of {list(SUFFIXES)}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                content: Any = {key: npz[key] for key in npz.files}
        else:  # weights_only=True, TorchScript refused: lsa_train.trust
            content = read_torch_file(path, what="tensor file")
    except UntrustedFileError as err:  # a tensor file never needs unpickling: no trust switch here
        script = "it is a TorchScript archive, whose loading runs code; save a dict of tensors"
        reason = _reason(err.__cause__) if err.__cause__ is not None else script
        raise ValueError(f"tensor file '{path}' could not be read safely: {reason}") from err
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise ValueError(f"tensor file '{path}' could not be read safely: {_reason(err)}") from err
    if not isinstance(content, Mapping):
        raise ValueError(f"tensor file '{path}' holds a {type(content).__name__}; expected a dict with keys x, y")
    missing = [key for key in ("x", "y") if key not in content]
    if missing:
        raise ValueError(
            f"tensor file '{path}' has no {' or '.join(repr(k) for k in missing)} "
            f"(keys: {sorted(map(str, content))[:10]}); expected x, y and optionally x_test, y_test"
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
        arrays[key] = value.detach()
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

    All checks run in ``__init__`` (the file is read there), so bad data fails before training.

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
        **kwargs: Common arguments of :class:`~lsa_train.data.base.LSADataModule`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: Unreadable file, missing keys, bad shapes or dtypes, mismatched lengths,
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
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if num_classes is not None and not _is_class_count(num_classes):
            raise ValueError(f"num_classes must be an integer >= 2 or None (from the labels), got {num_classes!r}")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.path = Path(path).expanduser().absolute()
        self.test_fraction = float(test_fraction)
        self.layout = layout
        arrays = load_arrays(self.path)
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
