"""What a command line said: the current Hydra job's overrides and group choices, parsed by Hydra's own parser.

Everything here is plain reading; what the overrides then do is in the sibling modules of
:mod:`lsa_train.app.overrides`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def compose_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """``conf/``'s ``config_name`` composed with ``overrides``: inside a running app with its own config search
    path, else on its own."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=list(overrides))
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def hydra_choice(group: str) -> str | None:
    """The option chosen for ``group`` in the current Hydra run (``None`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get(group)
    return None if choice is None else str(choice)


def hydra_groups() -> set[str]:
    """The config groups of the current Hydra job (``data``, ``trainer``, ``hydra/launcher``, ...; empty outside
    Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return set(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else set()


def hydra_task_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job (``[]`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra's parsed form of command-line ``overrides`` (``key_or_group``, ``value()``, ``is_add()``, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def names_key(overrides: Sequence[str], key: str) -> bool:
    """Whether one of ``overrides`` sets ``key`` (``key=``, ``+key=``, ``++key=``, ``~key``)."""
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in overrides)


def run_first_overrides(run_dir: Path) -> list[str]:
    """The overrides of a run's first command line (``<run>/.hydra/overrides.yaml``), read as data:
    strings only, ``[]`` when the file is missing, unreadable or larger than 1 MiB."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        if not path.is_file() or path.stat().st_size > 2**20:
            return []
        node = OmegaConf.create(path.read_text(encoding="utf-8"))
    except Exception:  # any unreadable or malformed file: no overrides
        return []
    return [str(item) for item in node] if isinstance(node, ListConfig) else []
