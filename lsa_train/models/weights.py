"""Loading a network's weights from a file someone handed you, without running code from it.

:func:`read_weights_file` opens a file with ``torch.load(weights_only=True)`` (tensors, dicts, lists and
numbers only) through :mod:`lsa_train.trust`. A file that the safe loader refuses, and any TorchScript
archive, is refused with the reason; full unpickling or ``torch.jit.load``, which can run any code stored
in the file, happen only with ``trust=True``.

:func:`extract_state_dict` finds the network's tensors in the usual layouts: a plain state dict, a
Lightning checkpoint (``state_dict`` with ``model.`` keys, ours or another project's), a
``{'model': ...}`` / ``{'state_dict': ...}`` / ``{'net': ...}`` dict, and keys prefixed by
``module.`` (DataParallel/DDP) or ``model.``.

:func:`load_weights` joins both and loads into a module, strictly by default, with the missing and
unexpected keys named in the error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsa_train.trust import TrustPolicy, UntrustedFileError, read_torch_file

log = logging.getLogger(__name__)

__all__ = ["MIN_LOADED_SHARE", "STATE_DICT_KEYS", "LoadReport", "UntrustedFileError", "extract_state_dict",
           "key_prefixes", "load_weights", "match_keys", "read_weights_file"]

#: Keys under which checkpoints of common training code keep the network's state dict.
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
#: Key prefixes stripped when they do not match the model (DataParallel, Lightning wrappers).
STRIPPABLE_PREFIXES: tuple[str, ...] = ("module.", "model.", "_orig_mod.", "net.")


def read_weights_file(path: str | Path, *, trust: bool | TrustPolicy = False) -> Any:
    """The object stored in ``path``, loaded on the CPU without executing code from it (see
    :func:`lsa_train.trust.read_torch_file`: TorchScript and files that need unpickling only with ``trust``).

    Args:
        path: A ``torch.save`` file (state dict or checkpoint) or a TorchScript archive.
        trust: Allow full unpickling (``weights_only=False``) and TorchScript. Only for files whose origin
            you trust: both run code stored in the file.

    Returns:
        The loaded object; for TorchScript archives the module's ``state_dict()``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UntrustedFileError: TorchScript or a file the safe loader refused, and no ``trust``.
        ValueError: The file is corrupt or not a PyTorch file.
    """
    return read_torch_file(path, trust=trust, what="weights file")


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


#: A partial load (``strict=False``) must fill at least this share of the model's tensors: less means the file
#: holds another network's weights, and the model would train or be evaluated mostly from its random init.
MIN_LOADED_SHARE = 0.5


@dataclass
class LoadReport:
    """What :func:`load_weights` did: how many of the model's tensors the file filled, the keys that were
    missing from or unexpected in the file, and where they went (``into``: ``""`` for the whole model,
    ``"net"`` for the network inside a :class:`~lsa_train.models.NormalizedModel`)."""

    path: Path
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    loaded: int = 0
    total: int = 0
    into: str = ""

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def describe(self) -> str:
        """``'cnn.pt': 6 of 6 tensors loaded`` (plus the missing/unexpected counts of a partial load)."""
        text = f"'{self.path}': {self.loaded} of {self.total} tensors loaded"
        text += f" into {self.into}" if self.into else ""
        if not self.complete:
            text += f" (strict=false: {len(self.missing)} missing, {len(self.unexpected)} unexpected in the file)"
        return text


def key_prefixes(keys: Any, limit: int = 6) -> list[str]:
    """The distinct first components of dotted keys, in order (``['features', 'classifier']``)."""
    found: list[str] = []
    for key in keys:
        head = str(key).split(".", 1)[0]
        if head not in found:
            found.append(head)
    return found[:limit] + (["..."] if len(found) > limit else [])


def _load_target(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> tuple[nn.Module, str]:
    """The module the file's tensors are for: ``model``, or the network inside a ``NormalizedModel`` when the
    file holds only that network (a plain torchvision state dict has no ``net.`` prefix and no statistics)."""
    from lsa_train.models.normalization import NormalizedModel

    if not isinstance(model, NormalizedModel):
        return model, ""
    whole = set(model.state_dict())
    inner = set(model.net.state_dict())
    whole_hits = len(whole & set(match_keys(weights, whole)))
    inner_hits = len(inner & set(match_keys(weights, inner)))
    return (model.net, "net") if inner_hits > whole_hits else (model, "")


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    trust: bool | TrustPolicy = False,
    min_share: float = MIN_LOADED_SHARE,
) -> LoadReport:
    """Loads the network weights stored in ``path`` into ``model`` (on the model's devices).

    Args:
        model: The network; its parameter names decide which wrapper prefixes are stripped. For a
            ``NormalizedModel`` whose file holds only the inner network, the weights go to ``model.net``
            (the normalization statistics stay those of the config).
        path: State dict, Lightning checkpoint, ``{'model': ...}``-style dict or TorchScript file.
        strict: Refuse missing or unexpected keys (and shape mismatches). With ``strict=False`` the
            matching entries are loaded and the others are returned in the report.
        trust: See :func:`read_weights_file`.
        min_share: With ``strict=False``, the least share of the model's tensors the file must fill.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: Unusable file, keys that do not fit under ``strict``, shapes that differ, or a partial
            load below ``min_share`` (the message names the key prefixes of the file and of the model).
    """
    file = Path(path).expanduser()
    raw = extract_state_dict(read_weights_file(file, trust=trust))
    target, into = _load_target(model, raw)
    own = target.state_dict()
    weights = match_keys(raw, set(own))
    shapes = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if shapes:
        key = shapes[0]
        raise ValueError(
            f"'{file}' does not fit the model: {len(shapes)} tensor(s) differ in shape, e.g. {key!r} is "
            f"{tuple(weights[key].shape)} in the file and {tuple(own[key].shape)} in the model"
        )
    report = LoadReport(file, sorted(set(own) - set(weights)), sorted(set(weights) - set(own)),
                        loaded=len(set(own) & set(weights)), total=len(own), into=into)
    if strict and not report.complete:
        raise ValueError(
            f"'{file}' does not fit the model: {len(report.missing)} missing key(s) {report.missing[:4]}, "
            f"{len(report.unexpected)} unexpected key(s) {report.unexpected[:4]}; set model.strict=false "
            "(strict=False in Python) to load the matching part"
        )
    if report.loaded < min_share * report.total:
        raise ValueError(
            f"'{file}' fills only {report.loaded} of the model's {report.total} tensors (a partial load needs at "
            f"least {min_share:.0%}): the file's keys start with {key_prefixes(raw)}, the model's with "
            f"{key_prefixes(own)}; is it another network's weights?"
        )
    target.load_state_dict(weights, strict=False)
    if not report.complete:
        log.warning("partial load of %s: missing %s, unexpected %s", report.describe(), report.missing[:8],
                    report.unexpected[:8])
    return report
