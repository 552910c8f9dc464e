"""A foreign run's saved config is parsed as data, never run as a program.

A run folder that is not signed by this user (:mod:`lsa_train.signing`) is foreign: a colleague's run, a
download, or one of the user's own runs edited after it was written. Its ``.hydra/config.yaml`` may hold
anything YAML and OmegaConf can express, including resolvers that run code (``${oc.create:...}``) or read the
environment (``${oc.env:AWS_SECRET_ACCESS_KEY}``), and settings that third-party code turns into programs
(``module.compile_model.options``), files (``checkpoint_path``) or paths to write. :func:`check_foreign_config`
accepts such a config only where it says what the project's own ``conf/`` could say:

* **No resolver runs** on it except where ``conf/`` has the identical interpolation at that key
  (``dirpath: ${paths.output_dir}/checkpoints``).
* **Known keys only**: every key is one that ``conf/`` defines (or lies below a key ``conf/`` leaves open,
  such as a per-probe ``lambda``), a named parameter of the project-allowed ``_target_`` of its node
  (``trainer.limit_train_batches``; never ``**kwargs``), or lies below a ``_target_`` this command line trusts.
* **Typed values**: where ``conf/`` has only numbers or booleans, a number or boolean (not a string).
* **Command-line-only keys** (:data:`COMMAND_LINE_ONLY`): settings that name programs, files, options or
  arguments handed on to third-party code may hold only a value ``conf/`` itself uses there.
* ``hydra`` is never read from a file; every ``_target_`` is checked by :func:`lsa_train.trust.check_saved_config`.

Anything else is refused in one line (:class:`ForeignConfigError`) naming the file, the key and the way out
(``lsa-trust <run>`` when the run is the user's own).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lsa_train.trust import ALLOWED_TARGETS, TrustPolicy, UntrustedError

#: Keys (``fnmatch`` patterns over dotted keys, list indices dropped) that a foreign file may hold only with a
#: value the project's ``conf/`` uses there: they name programs, files, options or keyword arguments that
#: third-party code acts on, or where a run writes.
COMMAND_LINE_ONLY: tuple[str, ...] = (
    "module.compile_model", "module.compile_model.*",
    "model.*kwargs*", "model.*pretrained_cfg*", "*checkpoint_path*",
    "logger.*.name", "logger.*.version", "logger.*.sub_dir", "logger.*.prefix", "logger.*.save_dir",
    "logger.*.root_dir", "logger.*.log_dir", "logger.*.tracking_uri", "logger.*.dir",
    "logger.*.artifact_location", "logger.*.offline",
    "callbacks.*.dirpath", "callbacks.*.filename", "callbacks.*.*dir*",
    "regularizer.mvl.dirpath",
    "trainer.plugins", "trainer.plugins.*", "trainer.profiler", "trainer.profiler.*", "trainer.default_root_dir",
    "trainer.strategy.*",
    "paths", "paths.*", "hydra", "hydra.*",
)

_INTERPOLATION = "${"
_GLOBAL_PACKAGE = re.compile(r"^#\s*@package\s+_global_\s*$", re.MULTILINE)


class ForeignConfigError(UntrustedError):
    """A foreign run's config holds something that is not plain data of the project's schema."""


# -- what conf/ says ----------------------------------------------------------------------------------
def _conf_root() -> Path:
    import lsa_train.conf

    return Path(next(iter(lsa_train.conf.__path__)))


def _flatten(node: Any, prefix: str) -> Iterator[tuple[str, Any, bool]]:
    """``(dotted key, value, is leaf)`` of a plain container; list items share the list's key."""
    if isinstance(node, dict) and node:
        if prefix:
            yield prefix, None, False
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        yield prefix, None, not node  # an empty list leaves the key open
        for value in node:
            yield from _flatten(value, prefix)
    else:
        yield prefix, node, True


@functools.cache
def reference() -> tuple[dict[str, frozenset[tuple[str, str]]], frozenset[str]]:
    """What ``conf/`` says: ``{dotted key: {(type, repr) of every value it sets there}}`` and the keys it
    leaves open (a leaf: ``null``, a number, ``{}``, ...: a user may put a structure below it)."""
    from omegaconf import OmegaConf

    values: dict[str, set[tuple[str, str]]] = {}
    open_keys: set[str] = set()
    root = _conf_root()
    for path in sorted(root.rglob("*.yaml")):
        relative = path.relative_to(root)
        package = "" if len(relative.parts) == 1 or _GLOBAL_PACKAGE.search(path.read_text()) else ".".join(
            relative.parts[:-1])
        content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if not isinstance(content, dict):
            continue
        parts = [(package, content), *list(_schema_parts(content.pop("defaults", None) or [], package))]
        for key, value, leaf in (item for prefix, node in parts for item in _flatten(node, prefix)):
            if not key:
                continue
            values.setdefault(key, set())
            if leaf:
                values[key].add(_typed(value))
                if not isinstance(value, str) or value == "???":
                    open_keys.add(key)
    return {k: frozenset(v) for k, v in values.items()}, frozenset(open_keys)


def _schema_parts(defaults: list[Any], package: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The structured schemas a defaults list names (``- /schema/attack@_here_: pgd``), as
    ``(package, plain content)``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    import lsa_train.app.schemas  # noqa: F401 (registers them)

    for item in defaults:
        if not isinstance(item, dict):
            continue
        for entry, name in item.items():
            group, _, at = str(entry).lstrip("/").partition("@")
            if not group.startswith("schema/"):
                continue
            node = ConfigStore.instance().load(f"{group}/{name}.yaml").node
            where = package if at in ("", "_here_") else ".".join(p for p in (package, at) if p)
            content = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
            if isinstance(content, dict):
                yield where, content


def _typed(value: Any) -> tuple[str, str]:
    kind = "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__
    return kind, repr(float(value)) if kind == "number" else repr(value)


# -- the check ----------------------------------------------------------------------------------------
def _known(key: str, known: dict[str, frozenset[tuple[str, str]]], open_keys: frozenset[str]) -> bool:
    if key in known:
        return True
    parts = key.split(".")
    return any(".".join(parts[:i]) in open_keys for i in range(1, len(parts)))


@functools.cache
def _parameters(target: str) -> frozenset[str]:
    """The named parameters of one of :data:`ALLOWED_TARGETS` (its ``**kwargs`` excluded)."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        signature = inspect.signature(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError, TypeError):
        return frozenset()
    return frozenset(p.name for p in signature.parameters.values()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _parameter_of_allowed_target(data: dict[str, Any], key: str) -> bool:
    """``key`` names a parameter of the project-allowed ``_target_`` of its parent node
    (``trainer.limit_train_batches`` of ``lightning.pytorch.trainer.Trainer``)."""
    parent, _, leaf = key.rpartition(".")
    node: Any = data
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, dict) else None
    target = node.get("_target_") if isinstance(node, dict) else None
    return isinstance(target, str) and target in ALLOWED_TARGETS and leaf in _parameters(target)


def _command_line_only(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in COMMAND_LINE_ONLY)


def _trusted_subtrees(node: Any, prefix: str, policy: TrustPolicy) -> Iterator[str]:
    """Keys of the nodes whose ``_target_`` this command line trusts (not one of the project's own)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and target not in ALLOWED_TARGETS and policy.allows_target(target):
            yield prefix
        for key, value in node.items():
            yield from _trusted_subtrees(value, f"{prefix}.{key}" if prefix else str(key), policy)
    elif isinstance(node, list):
        for value in node:
            yield from _trusted_subtrees(value, prefix, policy)


def check_foreign_config(
    cfg: Any, policy: TrustPolicy, source: str | Path, why: str, ignore: tuple[str, ...] = ()
) -> None:
    """Refuses a foreign run's config that is not plain data of the project's schema (see the module docs).

    Args:
        cfg: The loaded, unresolved config (``DictConfig`` or plain containers); nothing in it is evaluated.
        policy: This command line's trust (its ``trusted_targets`` open the arguments of those classes).
        source: The file it came from, for the message.
        why: Why the run is foreign (:attr:`lsa_train.signing.Verdict.reason`), for the message.
        ignore: Top-level or dotted keys the caller replaces with this command line's values (``ckpt_path``,
            ``paths.output_dir``): not checked.

    Raises:
        ForeignConfigError: One line naming the file, the key and the value.
    """
    from omegaconf import OmegaConf

    from lsa_train.trust import check_saved_config

    data = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    if not isinstance(data, dict):
        raise ForeignConfigError(f"'{source}' is not a mapping of settings")
    check_saved_config(data, policy, source)
    run = Path(source).parent.parent if Path(source).parent.name == ".hydra" else Path(source).parent
    way_out = (f"this run is foreign ({why}); if it is yours and you have read its config, sign it with "
               f"`lsa-trust {run}`")
    known, open_keys = reference()
    trusted = tuple(_trusted_subtrees(data, "", policy))
    for key, value, leaf in _flatten(data, ""):
        if key == "hydra" or key.startswith("hydra."):
            raise ForeignConfigError(f"'{source}' sets {key}: Hydra's settings are never read from a file; {way_out}")
        if not leaf or not key or any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        shown = _shown(value)
        if isinstance(value, str) and _INTERPOLATION in value:
            if _typed(value) not in known.get(key, ()):
                raise ForeignConfigError(
                    f"'{source}' sets {key}={shown}, an interpolation that lsa_train's conf/ does not have there; "
                    f"a foreign run's config is read as data (no resolver runs on it); {way_out}")
            continue
        if any(key == t or key.startswith(t + ".") for t in trusted if t):
            continue  # the arguments of a class this command line trusts
        if _command_line_only(key):
            if value is not None and _typed(value) not in known.get(key, ()):
                raise ForeignConfigError(
                    f"'{source}' sets {key}={shown}; that setting names a program, file, option or place to "
                    f"write, which only this command line may set for a foreign run; {way_out}")
            continue
        if not _known(key, known, open_keys) and not _parameter_of_allowed_target(data, key):
            raise ForeignConfigError(
                f"'{source}' sets {key}, a key lsa_train's conf/ does not define; a foreign run's config may "
                f"hold only the project's settings; {way_out}")
        kinds = {kind for kind, _ in known.get(key, ())} - {"NoneType"}
        if isinstance(value, str) and kinds and kinds <= {"number", "bool"}:
            raise ForeignConfigError(
                f"'{source}' sets {key}={shown}, but {key} is a {' or '.join(sorted(kinds))}; {way_out}")


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
