"""The trust boundary: what a file from elsewhere may make this program do.

Everything read from a file that the user did not write on this command line passes through here:
checkpoints, weights files, tensor files and the saved configs of run folders. The rules:

* **Trust comes only from the current command line** (or a library call's arguments): a
  :class:`TrustPolicy` is built from the app's composed config by :func:`policy_from_command_line`,
  never from a saved config, a checkpoint's hyper-parameters or the environment.
* **Files are data.** :func:`read_torch_file` reads with ``torch.load(weights_only=True)``; a file that
  needs full unpickling, and any TorchScript archive (loading one runs the code stored in it), is refused
  unless the policy allows unpickling (``trust_checkpoint=true``).
* **A saved config is data.** :func:`check_saved_config` refuses, before anything is imported, every
  ``_target_`` of a saved config (at any depth, ``_args_`` included) that is not on
  :data:`ALLOWED_TARGETS` (the project's own classes and builders and the few outside classes its configs
  name) or allowed by the command line (``trusted_targets=[my_nets.*]``, or the same ``++<key>._target_=...``
  given again).
* **Signed runs are the user's own** (:mod:`lsa_train.signing`): their configs are honoured as written;
  any other run's config is parsed as data (:mod:`lsa_train.foreign`), and every place a run writes is
  checked by the one write door (:mod:`lsa_train.writes`).
* **Run folders are what the path says.** :func:`check_checkpoint_link` refuses a symlinked checkpoint
  whose target lies outside the run folder its path names.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Every ``_target_`` a saved run config may name without the command line's say-so: the project's own
#: classes and builders that its configs use, and the outside classes its configs name. Exact names only:
#: a whole package is not safe (``torch.load``, ``torch.jit.load`` and ``torch.hub.load`` run code).
ALLOWED_TARGETS: frozenset[str] = frozenset({
    # models
    "lsa_train.models.create_model",
    "lsa_train.models.timm_models.create_timm_model",
    "lsa_train.models.robustbench_models.load_robustbench_model",
    # data
    "lsa_train.data.DigitsDataModule",
    "lsa_train.data.MoonsDataModule",
    "lsa_train.data.ImageFolderDataModule",
    "lsa_train.data.TensorDataModule",
    "lsa_train.data.TorchvisionDataModule",
    # attacks
    "lsa_train.attacks.APGD",
    "lsa_train.attacks.FGSM",
    "lsa_train.attacks.FGSMRS",
    "lsa_train.attacks.MARTAttack",
    "lsa_train.attacks.NoAttack",
    "lsa_train.attacks.PGD",
    "lsa_train.attacks.PGDL2",
    "lsa_train.attacks.TRADESAttack",
    # training
    "lsa_train.training.EMAWeightAveraging",
    "lsa_train.training.LSARegularizedModule",
    "lsa_train.training.MVLRefreshCallback",
    "lsa_train.training.RNGStateCallback",
    "lsa_train.app.sweep_summary.SweepSummaryCallback",
    # Lightning
    "lightning.pytorch.trainer.Trainer",
    "lightning.pytorch.Trainer",
    "lightning.Trainer",
    "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.RichModelSummary",
    "lightning.pytorch.callbacks.RichProgressBar",
    "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.MLFlowLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.WandbLogger",
    # optimizers and schedulers
    "torch.optim.Adam",
    "torch.optim.AdamW",
    "torch.optim.SGD",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.MultiStepLR",
    "torch.optim.lr_scheduler.OneCycleLR",
    "torch.optim.lr_scheduler.StepLR",
    # Hydra sweeper plugins
    "optuna.samplers.TPESampler",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
})

#: The app key that names more trusted targets (patterns such as ``my_nets.*``).
TRUSTED_TARGETS_KEY = "trusted_targets"
#: The app key that allows full unpickling and TorchScript.
TRUST_CHECKPOINT_KEY = "trust_checkpoint"

_TARGET = "_target_"
_CLI_TARGET = re.compile(r"^\+{0,2}(?P<key>(?:[\w-]+\.)*)_target_=(?P<value>.+)$")
#: How ``torch.load(weights_only=True)`` words a refused (not a broken) object.
_REFUSED_OBJECT = re.compile(r"unsupported (global|class)|is blocked|not an allowed global|allowlisted", re.IGNORECASE)


class UntrustedError(ValueError):
    """Something read from a file needs a trust the current command line did not give."""


class UntrustedFileError(UntrustedError):
    """The file holds objects that ``torch.load(weights_only=True)`` refuses, or is TorchScript: loading it
    would run code from it; it needs ``trust_checkpoint=true``."""


class UntrustedTargetError(UntrustedError):
    """A saved config names a ``_target_`` that is neither allowed nor trusted on the command line."""


@dataclass(frozen=True)
class TrustPolicy:
    """What the current command line allows beyond :data:`ALLOWED_TARGETS` and ``weights_only`` loading.

    Attributes:
        unpickle: Full unpickling and TorchScript (``trust_checkpoint=true``): runs code stored in files.
        targets: More ``_target_`` values a saved config may name: exact dotted paths or ``fnmatch``
            patterns (``my_nets.*``).
    """

    unpickle: bool = False
    targets: tuple[str, ...] = ()

    def allows_target(self, target: str) -> bool:
        """Whether a saved config may name ``target``."""
        return target in ALLOWED_TARGETS or any(fnmatch.fnmatchcase(target, p) for p in self.targets)


def as_policy(trust: bool | TrustPolicy) -> TrustPolicy:
    """A :class:`TrustPolicy` from a policy or a plain ``trust`` flag (library calls)."""
    return trust if isinstance(trust, TrustPolicy) else TrustPolicy(unpickle=bool(trust))


def command_line_targets(overrides: Iterable[str]) -> tuple[str, ...]:
    """The ``_target_`` values named by ``<key>._target_=<value>`` overrides (``+``/``++`` included)."""
    found = []
    for override in overrides:
        match = _CLI_TARGET.match(str(override).strip())
        if match:
            found.append(match.group("value").strip().strip("'\""))
    return tuple(found)


def policy_from_command_line(cfg: Mapping[str, Any], overrides: Iterable[str] = ()) -> TrustPolicy:
    """The policy of the current command line: ``trust_checkpoint``, ``trusted_targets`` and the
    ``_target_`` values given as overrides.

    Args:
        cfg: The app's config composed from the command line (never a saved run's config).
        overrides: The command-line overrides (Hydra's task overrides).

    Raises:
        ValueError: ``trust_checkpoint`` is not a boolean, or ``trusted_targets`` not a list of strings.
    """
    unpickle = cfg.get(TRUST_CHECKPOINT_KEY, False)
    if not isinstance(unpickle, bool):
        raise ValueError(f"{TRUST_CHECKPOINT_KEY}={unpickle} must be true or false")
    patterns = cfg.get(TRUSTED_TARGETS_KEY) or []
    if isinstance(patterns, str) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{TRUSTED_TARGETS_KEY}={patterns} must be a list of dotted paths or patterns, "
                         f"e.g. {TRUSTED_TARGETS_KEY}=[my_nets.*]")
    return TrustPolicy(unpickle=unpickle, targets=(*patterns, *command_line_targets(overrides)))


# -- saved configs --------------------------------------------------------------------------------
def _walk_targets(node: Any, path: str) -> Iterator[tuple[str, Any, bool]]:
    """``(key, raw target, is interpolation)`` of every ``_target_`` below ``node`` (dicts and lists)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        for key in node:
            where = f"{path}.{key}" if path else str(key)
            if key == _TARGET:
                interpolated = OmegaConf.is_interpolation(node, _TARGET)
                raw = node._get_node(_TARGET)._value()  # unresolved: a saved config is not evaluated here
                yield where, raw, interpolated
            else:
                yield from _walk_targets(node._get_node(key), where)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            yield from _walk_targets(node._get_node(index), f"{path}[{index}]")
    elif isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == _TARGET:
                yield where, value, isinstance(value, str) and "${" in value
            else:
                yield from _walk_targets(value, where)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from _walk_targets(value, f"{path}[{index}]")


def check_saved_config(cfg: Any, policy: TrustPolicy, source: str | Path) -> None:
    """Refuses a saved config that names a ``_target_`` the policy does not allow; imports nothing.

    Args:
        cfg: The loaded config (``DictConfig`` or plain containers), not yet resolved or instantiated.
        policy: The current command line's :class:`TrustPolicy`.
        source: The file it came from (for the message).

    Raises:
        UntrustedTargetError: One line naming the key, the target and how to allow it.
    """
    for key, target, interpolated in _walk_targets(cfg, ""):
        if interpolated or not isinstance(target, str):
            raise UntrustedTargetError(
                f"'{source}' sets {key} to {target!r}, which is not a plain dotted path; a saved config's "
                "_target_ must name its class directly, so it was not loaded"
            )
        if not policy.allows_target(target):
            pattern = target.rsplit(".", 1)[0] + ".*" if "." in target else target
            raise UntrustedTargetError(
                f"'{source}' sets {key}={target}, which is not one of lsa_train's own targets, so nothing was "
                f"imported; if you trust it, add {TRUSTED_TARGETS_KEY}=[{pattern}] or give ++{key}={target} "
                "on the command line"
            )


# -- torch files ----------------------------------------------------------------------------------
def is_torchscript_file(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip with a ``constants.pkl`` record, the test
    ``torch.load`` itself uses to hand a file to ``torch.jit.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names)


def read_torch_file(path: str | Path, *, trust: bool | TrustPolicy = False, what: str = "file") -> Any:
    """The object stored in ``path``, read on the CPU without executing code from it.

    Args:
        path: A ``torch.save`` file (tensors, state dict, checkpoint) or a TorchScript archive.
        trust: Allow full unpickling (``weights_only=False``) of a file the safe loader refuses, and
            TorchScript (whose loading runs the code stored in it). Only from the command line.
        what: How messages name the file (``weights file``, ``tensor file``, ...).

    Returns:
        The loaded object; for a TorchScript archive (only with ``trust``) the module's ``state_dict()``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UntrustedFileError: TorchScript, or a file the safe loader refuses, without ``trust``.
        ValueError: The file is corrupt or not a PyTorch file.
    """
    import torch

    policy = as_policy(trust)
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist (looked at '{file.absolute()}')")
    if is_torchscript_file(file):
        if not policy.unpickle:
            raise UntrustedFileError(
                f"{what} '{file}' is a TorchScript archive, and loading one runs the code stored in it, so it was "
                f"not loaded; {_HOW_TO_TRUST}"
            )
        try:
            return torch.jit.load(str(file), map_location="cpu").state_dict()
        except Exception as err:
            raise ValueError(f"{what} '{file}' looks like a TorchScript archive but cannot be loaded "
                             f"({_short(err)})") from err
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # the safe unpickler names a refused class as "Unsupported global"; anything else is a broken file
        if not _REFUSED_OBJECT.search(str(err)):
            raise ValueError(f"{what} '{file}' is corrupt or not a PyTorch file ({_short(err)})") from err
        if not policy.unpickle:
            raise UntrustedFileError(
                f"{what} '{file}' holds Python objects that the safe loader (weights_only=True) refuses "
                f"({_refusal(err)}); loading it would run code from the file, so it was not loaded; {_HOW_TO_TRUST}"
            ) from err
        log.warning("loading '%s' with weights_only=False because trust_checkpoint=true: this unpickles "
                    "arbitrary objects", file)
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, random bytes, not a torch file
        raise ValueError(f"{what} '{file}' is corrupt or not a PyTorch file ({type(err).__name__}: "
                         f"{_short(err)})") from err


_HOW_TO_TRUST = "if you trust where the file comes from, add trust_checkpoint=true"
_UNSUPPORTED = re.compile(r"unsupported (?:global: )?GLOBAL [\w.]+|Unsupported class [\w.]+", re.IGNORECASE)


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _refusal(err: BaseException) -> str:
    """The object the safe unpickler refused (``Unsupported global: GLOBAL posix.system``), else the start
    of its message."""
    found = _UNSUPPORTED.search(str(err))
    return found.group(0) if found else _short(err)[:120]


# -- run folders ----------------------------------------------------------------------------------
#: Folder of the checkpoints inside a run folder.
CHECKPOINT_DIR = "checkpoints"


def run_folder_of(path: str | Path) -> Path:
    """The run folder a checkpoint path names, as given (symlinks not followed): ``<run>`` for
    ``<run>/checkpoints/<file>``, else the file's folder. Absolute."""
    given = Path(os.path.abspath(Path(path).expanduser()))
    return given.parent.parent if given.parent.name == CHECKPOINT_DIR else given.parent


def escapes_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is (or passes through) a symlink whose target lies outside its run folder."""
    given = Path(os.path.abspath(Path(path).expanduser()))
    folder = run_folder_of(given).resolve()
    return not given.resolve().is_relative_to(folder)


def check_checkpoint_link(path: str | Path, what: str = "ckpt_path") -> None:
    """Refuses a checkpoint path that is a symlink to a file outside the run folder its path names.

    Raises:
        UntrustedError: One line naming the path and where it points.
    """
    if escapes_run_folder(path):
        raise UntrustedError(
            f"{what}='{path}' is a symlink to '{Path(path).expanduser().resolve()}', outside the run folder "
            f"'{run_folder_of(path)}'; give the checkpoint's real path"
        )
