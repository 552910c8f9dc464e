"""Loading a network's weights from a file someone handed you, without running code from it.

:func:`read_weights_file` opens a file with ``torch.load(weights_only=True)`` (tensors, dicts, lists and
numbers only) or, for a TorchScript archive, ``torch.jit.load`` whose ``state_dict()`` is taken. A file
that the safe loader refuses is refused with the reason; full unpickling, which can run any code stored
in the file, happens only with ``trust=True``.

:func:`extract_state_dict` finds the network's tensors in the usual layouts: a plain state dict, a
Lightning checkpoint (``state_dict`` with ``model.`` keys, ours or another project's), a
``{'model': ...}`` / ``{'state_dict': ...}`` / ``{'net': ...}`` dict, and keys prefixed by
``module.`` (DataParallel/DDP) or ``model.``.

:func:`load_weights` joins both and loads into a module, strictly by default, with the missing and
unexpected keys named in the error.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Keys under which checkpoints of common training code keep the network's state dict.
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
#: Key prefixes stripped when they do not match the model (DataParallel, Lightning wrappers).
STRIPPABLE_PREFIXES: tuple[str, ...] = ("module.", "model.", "_orig_mod.", "net.")


#: How ``torch.load(weights_only=True)`` words a refused (not a broken) object.
_REFUSED_OBJECT = re.compile(r"unsupported (global|class)|is blocked|not an allowed global|allowlisted", re.IGNORECASE)


class UntrustedFileError(ValueError):
    """The file holds objects that ``torch.load(weights_only=True)`` refuses; loading it needs ``trust=True``."""


def is_torchscript_file(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder and ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def read_weights_file(path: str | Path, *, trust: bool = False) -> Any:
    """The object stored in ``path``, loaded on the CPU without executing code from it.

    Args:
        path: A ``torch.save`` file (state dict or checkpoint) or a TorchScript archive.
        trust: Allow full unpickling (``weights_only=False``) of a file the safe loader refuses.
            Only for files whose origin you trust: unpickling can run arbitrary code.

    Returns:
        The loaded object; for TorchScript archives the module's ``state_dict()``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UntrustedFileError: The safe loader refused the file and ``trust`` is False.
        ValueError: The file is corrupt or not a PyTorch file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"weights file '{path}' does not exist (looked at '{file.resolve()}')")
    if is_torchscript_file(file):
        try:
            return torch.jit.load(str(file), map_location="cpu").state_dict()
        except Exception as err:
            raise ValueError(f"'{file}' looks like a TorchScript archive but cannot be loaded ({_short(err)})") from err
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # the safe unpickler names a refused class as "Unsupported global"; anything else is a broken file
        if not _REFUSED_OBJECT.search(str(err)):
            raise ValueError(f"'{file}' is corrupt or not a PyTorch file ({_short(err)})") from err
        if not trust:
            raise UntrustedFileError(
                f"'{file}' holds Python objects that the safe loader (weights_only=True) refuses "
                f"({_short(err)[:120]}); loading it would run code from the file, so it was not loaded"
            ) from err
        log.warning("loading '%s' with weights_only=False because trust was given: this unpickles arbitrary objects",
                    file)
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, random bytes, not a torch file
        raise ValueError(f"'{file}' is corrupt or not a PyTorch file ({type(err).__name__}: {_short(err)})") from err


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The network state dict inside a loaded checkpoint object (see the module docstring for layouts).

    Raises:
        ValueError: No mapping of names to tensors was found.
    """
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
            if isinstance(inner, Mapping) and inner:
                tensors = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
                if tensors:
                    return tensors
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    kind = type(obj).__name__
    keys = list(obj)[:6] if isinstance(obj, Mapping) else []
    raise ValueError(
        f"found no network weights in the file (a {kind}{f' with keys {keys}' if keys else ''}); expected a state "
        f"dict, a Lightning checkpoint or a dict with one of {list(STATE_DICT_KEYS)}"
    )


def match_keys(weights: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``weights`` with the wrapper prefixes removed that make its keys match ``expected``.

    Tries the keys as they are, then with each of :data:`STRIPPABLE_PREFIXES` stripped where present
    (repeatedly, so ``model.module.`` goes too), and keeps the variant that matches most keys. Keys of
    a Lightning module that belong to other parts (metrics, attacks) are left out when stripping the
    prefix selects the network's entries.
    """
    best = dict(weights)
    best_hits = len(expected & set(best))
    frontier = [best]
    for _ in range(3):
        next_frontier = []
        for candidate in frontier:
            for prefix in STRIPPABLE_PREFIXES:
                selected = {k[len(prefix):]: v for k, v in candidate.items() if k.startswith(prefix)}
                if not selected:
                    continue
                hits = len(expected & set(selected))
                if hits > best_hits:
                    best, best_hits = selected, hits
                next_frontier.append(selected)
        frontier = next_frontier
    return best


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the keys that were missing from or unexpected in the file."""

    path: Path
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True, trust: bool = False) -> LoadReport:
    """Loads the network weights stored in ``path`` into ``model`` (on the model's devices).

    Args:
        model: The network; its parameter names decide which wrapper prefixes are stripped.
        path: State dict, Lightning checkpoint, ``{'model': ...}``-style dict or TorchScript file.
        strict: Refuse missing or unexpected keys (and shape mismatches). With ``strict=False`` the
            matching entries are loaded and the others are returned in the report (and logged).
        trust: See :func:`read_weights_file`.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: Unusable file, keys that do not fit under ``strict``, or shapes that differ.
    """
    file = Path(path).expanduser()
    weights = match_keys(extract_state_dict(read_weights_file(file, trust=trust)), set(model.state_dict()))
    own = model.state_dict()
    shapes = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if shapes:
        key = shapes[0]
        raise ValueError(
            f"'{file}' does not fit the model: {len(shapes)} tensor(s) differ in shape, e.g. {key!r} is "
            f"{tuple(weights[key].shape)} in the file and {tuple(own[key].shape)} in the model"
        )
    report = LoadReport(file, sorted(set(own) - set(weights)), sorted(set(weights) - set(own)))
    if strict and not report.complete:
        raise ValueError(
            f"'{file}' does not fit the model: {len(report.missing)} missing key(s) {report.missing[:4]}, "
            f"{len(report.unexpected)} unexpected key(s) {report.unexpected[:4]}; set strict=False to load the "
            "matching part"
        )
    model.load_state_dict(weights, strict=False)
    if not report.complete:
        log.warning("partial load of '%s': missing %s, unexpected %s", file, report.missing, report.unexpected)
    return report
