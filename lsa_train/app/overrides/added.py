"""Keys added on the command line (``+key=value``, ``++key=value``) must be read by something.

Hydra refuses a typo'd key (``regularizer.lamda=0.5``) and suggests ``+regularizer.lamda=0.5``; following
that hint would add a key nothing reads, and the run would silently use the default. Here a key added
under a node the app reads key by key (the *closed* nodes: everything but the :data:`OPEN_NODES`, whose
keys go to a constructor that refuses unknown ones or are the user's own classes' arguments) is refused
with the nearest known key, and Hydra's own "Could not override" message gets the same suggestion instead
of its ``+`` hint.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lsa_train.app.errors import ConfigError
from lsa_train.app.overrides.command_line import compose_config, parse_overrides

#: Per app (its config name), the top-level nodes whose keys may be added freely: a user class's
#: arguments (``+model.width=16``), Lightning's Trainer/callback/logger arguments, constructor arguments
#: that are checked when built, and Hydra's own.
OPEN_NODES: dict[str, tuple[str, ...]] = {
    "train": ("model", "data", "trainer", "callbacks", "logger", "module", "optimizer", "scheduler", "hydra",
              "launcher", "hparams_search", "local"),
    "evaluate": ("model", "data", "hydra"),
    "analyze": ("model", "data", "hydra"),
}
#: The config name of each console program.
PROGRAM_CONFIGS: dict[str, str] = {"lsa-train": "train", "lsa-evaluate": "evaluate", "lsa-analyze": "analyze"}
_ABSENT = object()


def _is_closed(config_name: str, key: str) -> bool:
    return key.split(".", 1)[0] not in OPEN_NODES.get(config_name, ())


def _paths(node: Any, prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted paths of the keys below ``node`` (``pgd.eps``), ``hydra`` left out."""
    if not isinstance(node, DictConfig) or depth == 0:
        return []
    found = []
    for key in node:
        if str(key) == "hydra":
            continue
        path = f"{prefix}{key}"
        found.append(path)
        found += _paths(node._get_node(key), f"{path}.", depth - 1)
    return found


def _nearest(base: DictConfig, key: str) -> tuple[str, list[str]]:
    """``did you mean ...`` text and the valid keys of the node ``key`` would be added to: a sibling with a
    close name, else a key of that name elsewhere (``+eps`` on evaluate: ``pgd.eps``)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent, default=None) if parent else base
    keys = [str(k) for k in node if str(k) != "hydra"] if isinstance(node, DictConfig) else []
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.75)
    if close:
        return f"did you mean {prefix}{close[0]}?", keys
    elsewhere = [p for p in _paths(base) if p.rpartition(".")[2] == leaf]
    if elsewhere:
        return f"did you mean {' or '.join(elsewhere[:3])}?", keys
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
    return (f"did you mean {prefix}{close[0]}?" if close else ""), keys


def check_added_keys(config_name: str, overrides: Sequence[str]) -> None:
    """Refuses ``+key``/``++key`` overrides that add a key nothing reads (under a closed node).

    Args:
        config_name: ``train``, ``evaluate`` or ``analyze``.
        overrides: The command line's overrides (Hydra's task overrides).

    Raises:
        ConfigError: One line naming the override and the nearest known key.
    """
    parsed = parse_overrides(overrides)
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and _is_closed(config_name, o.key_or_group)]
    if not added:
        return
    kept = [o.input_line for o in parsed if not (o.is_add() or o.is_force_add())]
    base = compose_config(config_name, kept)
    for override in added:
        key = override.key_or_group
        if OmegaConf.select(base, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
            continue  # ++ of a key that exists: a plain override
        hint, keys = _nearest(base, key)
        where = key.rpartition(".")[0] or "the top level"
        raise ConfigError(
            f"{override.input_line}: {where} has no key '{key.rpartition('.')[2]}', and nothing would read an added "
            f"one (it would be ignored); {hint + ' ' if hint else ''}valid keys: {', '.join(keys)}"
        )


def suggest_for_failed_override(config_name: str, overrides: Sequence[str], message: str) -> str | None:
    """Hydra's "Could not override 'key'" with the nearest known key.

    Under a closed node the ``+key`` hint is replaced (an added key would be read by nothing); under an
    open node (``trainer.max_epoch``) a close sibling is suggested and the ``+key`` route, which passes a
    new argument to the node's constructor, stays. ``None`` when there is nothing to add.
    """
    import re

    match = re.search(r"Could not override '([\w.\-]+)'", message)
    if not match:
        return None
    key = match.group(1)
    closed = _is_closed(config_name, key)
    try:
        kept = [o.input_line for o in parse_overrides(overrides) if o.key_or_group != key]
        base = compose_config(config_name, kept)
        hint, keys = _nearest(base, key) if closed else _close_sibling(base, key)
    except Exception:  # a second composition problem: Hydra's own message stays
        return None
    where, leaf = key.rpartition(".")[0] or "the top level", key.rpartition(".")[2]
    if closed:
        return f"Could not override '{key}': {where} has no key '{leaf}'; {hint + ' ' if hint else ''}" \
               f"valid keys: {', '.join(keys)}"
    if not hint:
        return None
    return (f"Could not override '{key}': {where} has no key '{leaf}'; {hint} (+{key}=... would pass "
            f"'{leaf}' to {where} as a new argument)")


def _close_sibling(base: DictConfig, key: str) -> tuple[str, list[str]]:
    """``did you mean ...`` for a key of an open node: only a sibling with a close name counts."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent, default=None) if parent else base
    keys = [str(k) for k in node if str(k) != "hydra"] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.75)
    return (f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""), keys
