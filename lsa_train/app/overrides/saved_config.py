"""This command line's overrides applied onto a saved run config: what a resume (``ckpt_path=<run>/...``) runs.

:func:`apply_overrides` puts the overrides on the run's own config as Hydra would compose them: group switches
first, then values and deletions on top. Switching a group (``trainer=gpu``) changes only the keys on which
the new group's ``conf/`` file differs from the run's (:func:`merge_group_switch`); the run's own values of
every other key are kept. What defines the trained network cannot change: a group other than
:data:`RESUMABLE_GROUPS`, or a changed ``model.*`` value, is refused in one line. Which run folder, and
which group choices it records, is :mod:`lsa_train.app.resume`'s business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lsa_train.app import run_dirs
from lsa_train.app.errors import ConfigError, one_line
from lsa_train.app.overrides.command_line import compose_config, hydra_groups, parse_overrides
from lsa_train.trust import TRUST_CHECKPOINT_KEY, TRUSTED_TARGETS_KEY

#: Config groups a resume may switch: where and how the run continues, not what it trains.
RESUMABLE_GROUPS: tuple[str, ...] = ("trainer", "callbacks", "logger", "paths", "launcher", "hydra")
#: Keys that always come from this command line, never from the saved config.
COMMAND_LINE_KEYS: tuple[str, ...] = ("ckpt_path", TRUST_CHECKPOINT_KEY, TRUSTED_TARGETS_KEY)
#: Node whose values define the trained network.
_MODEL = "model"


def apply_overrides(
    cfg: DictConfig, cli_cfg: DictConfig, overrides: list[str], run_dir: Path, choices: dict[str, str | None]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Applies this command line's ``overrides`` to the saved ``cfg`` (in place): group switches first, then
    values and deletions on top (as Hydra composes them). Keys of :data:`COMMAND_LINE_KEYS` and Hydra's own
    are left to the caller.

    Args:
        cfg: The run's saved config.
        cli_cfg: The config composed from this command line (a group it lacks cannot be switched).
        overrides: This command line's overrides (Hydra's task overrides).
        run_dir: The run folder (for the messages, and its ``.hydra/hydra.yaml``).
        choices: The run's group choices as its latest resume left them
            (:func:`lsa_train.app.resume.run_choices`).

    Returns:
        The switched groups (``{group: choice}``) and the keys they changed (see :func:`merge_group_switch`).

    Raises:
        ConfigError: A group switch or ``model.*`` value that would change what the run trains.
    """
    try:
        parsed = parse_overrides(overrides)
    except Exception as err:  # Hydra parsed them once already; this is a guard
        raise ConfigError(f"cannot read the overrides {overrides}: {one_line(err)}") from err
    groups = hydra_groups()
    switched: dict[str, str] = {}
    changes: list[dict[str, Any]] = []
    own = [o for o in parsed if not (o.key_or_group in COMMAND_LINE_KEYS or o.key_or_group.startswith("hydra.")
                                     or o.key_or_group.startswith("hydra/"))]
    for override in own:
        if override.key_or_group in groups:
            changes += _switch_group(cfg, cli_cfg, override.key_or_group, override.value(), choices, run_dir,
                                     switched)
    for override in own:
        key = override.key_or_group
        if key in groups:
            continue
        if override.is_delete():
            _delete(cfg, key)
        else:
            _set_value(cfg, key, override.value(), run_dir)
    return switched, changes


def _switch_group(
    cfg: DictConfig, cli_cfg: DictConfig, group: str, choice: Any, choices: dict[str, str | None], run_dir: Path,
    switched: dict[str, str],
) -> list[dict[str, Any]]:
    """Switches ``group`` of the saved ``cfg`` to ``choice`` (see :func:`merge_group_switch`); returns what
    changed."""
    saved = choices.get(group)
    if group in choices and str(choice) == str(saved):
        return []  # the run's own choice, repeated
    record = run_dir / run_dirs.HYDRA_CONFIG
    if group in RESUMABLE_GROUPS and group in cli_cfg:
        if group not in choices or saved is None:
            raise ConfigError(
                f"{group}={choice}: '{record}' does not record the run's {group} choice, so the switch cannot tell "
                f"the run's own {group} values from its group's; give the {group}.<key>=<value> settings to change "
                f"instead of {group}={choice}"
            )
        was = _group_node(group, str(saved), choice)
        now = _group_node(group, str(choice), choice)
        run_node = OmegaConf.to_container(cfg[group], resolve=False) if group in cfg else {}
        merged, changes = merge_group_switch(run_node, was, now, group)
        with open_dict(cfg):
            cfg[group] = OmegaConf.create(merged)
        switched[group] = str(choice)
        return [{**change, "group": f"{group}={choice}"} for change in changes]
    was_text = f"{group}={saved}" if group in choices else f"a {group} that '{record}' does not record"
    raise ConfigError(
        f"{group}={choice}: ckpt_path resumes the run in '{run_dir}', trained with {was_text}; a resume keeps what "
        f"the run trains (only {', '.join(RESUMABLE_GROUPS[:4])} can switch): drop {group}={choice}, or leave out "
        "ckpt_path to start a new run"
    )


def _group_node(group: str, choice: str, asked: Any) -> Any:
    """``conf/``'s ``group`` node for ``group=choice`` (the other groups at their defaults), unresolved.

    Raises:
        ConfigError: ``conf/`` has no such choice (any more).
    """
    try:
        composed = compose_config("train", [f"{group}={choice}"])
    except Exception as err:
        raise ConfigError(
            f"{group}={asked}: cannot compose {group}={choice} to compare the run's {group} with the new one "
            f"({one_line(err)[:160]}); give the {group}.<key>=<value> settings to change instead of {group}={asked}"
        ) from err
    node = composed.get(group)
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


#: A key absent from a config node (distinct from a ``null`` value).
_ABSENT = object()


def merge_group_switch(run: Any, was: Any, now: Any, prefix: str) -> tuple[Any, list[dict[str, Any]]]:
    """The run's node ``run`` after switching its group from ``conf/``'s node ``was`` to ``now``.

    A key whose value is the same in ``was`` and ``now`` keeps the run's own value (what the run set or left as
    its group gave it); a key on which the groups differ takes ``now``'s value (what the switch is for). Nested
    nodes are merged key by key; lists are values.

    Args:
        run: The run's saved node (plain containers, unresolved).
        was: ``conf/``'s node for the run's choice.
        now: ``conf/``'s node for the new choice.
        prefix: The node's dotted key (``trainer``), for the changes.

    Returns:
        The merged node and the changes, ``{"key", "was", "now"}`` per key whose value the switch changed
        (values as text; ``(unset)`` for a key that was absent or is removed, ``{...}`` for a whole node).
    """
    changes: list[dict[str, Any]] = []

    def merge(r: Any, o: Any, n: Any, key: str) -> Any:
        if all(isinstance(v, dict) for v in (r, o, n)):
            out: dict[str, Any] = {}
            for k in [*r, *(k for k in n if k not in r), *(k for k in o if k not in r and k not in n)]:
                value = merge(r.get(k, _ABSENT), o.get(k, _ABSENT), n.get(k, _ABSENT), f"{key}.{k}")
                if value is not _ABSENT:
                    out[k] = value
            return out
        if o == n:
            return r
        if n != r:
            changes.append({"key": key, "was": _shown(r), "now": _shown(n)})
        return n

    merged = merge(run, was, now, prefix)
    return ({} if merged is _ABSENT else merged), changes


def _shown(value: Any) -> str:
    """A value for the summary: ``(unset)`` for an absent key, ``{...}`` for a whole node."""
    if value is _ABSENT:
        return "(unset)"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def _set_value(cfg: DictConfig, key: str, value: Any, run_dir: Path) -> None:
    if key == _MODEL or key.startswith(_MODEL + "."):
        current = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if _plain(current) != _plain(value):
            raise ConfigError(
                f"{key}={value}: ckpt_path resumes the run in '{run_dir}', whose {key} is {_plain(current)!r}; "
                "a resume keeps the trained network: drop the override, or leave out ckpt_path to start a new run"
            )
        return
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _delete(cfg: DictConfig, key: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        with open_dict(parent):
            del parent[leaf]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


