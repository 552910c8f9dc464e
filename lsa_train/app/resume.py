"""Resuming a training run from its folder: ``python -m lsa_train ckpt_path=<run>/checkpoints/last.ckpt``.

The run's own config is the base (its ``.hydra/config.yaml``, or the effective config of its latest
resume), not the default config: a resume continues the run that was asked for. This command line's
overrides go on top (``trainer.max_epochs=40``, ``trainer=gpu``), and the run keeps writing to its
folder (``hydra.run.dir`` is the run dir, see :mod:`lsa_train.app.run_dirs`). Each resume records its
effective config and overrides in ``<run>/.hydra/resumes/<date>_<time>/``; the run's original
``.hydra/config.yaml`` is never rewritten.

A run signed by this user (:mod:`lsa_train.signing`) is resumed with its config as written, and its
signature is extended to the new resume record. Any other run is foreign: its saved config is data
(:mod:`lsa_train.foreign`; every ``_target_`` of the effective config must be one of the project's own or
vouched for on this command line), and a resume never signs it. ``trust_checkpoint`` / ``trusted_targets``
come from this command line only. What defines the trained network cannot change on
a resume: a group choice other than those of :data:`RESUMABLE_GROUPS` that differs from the run's, or a
changed ``model.*`` value, is refused in one line.

Switching a group (``trainer=gpu``) changes only the keys on which the new group's ``conf/`` file differs
from the run's (``trainer.accelerator``, ``trainer.devices``): the run's own values of every other key
(``trainer.max_epochs``, ``trainer.gradient_clip_val``, a callback's ``monitor``) are kept, and keys this
command line names go on top. The summary lists every key the switch changed (:func:`merge_group_switch`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lsa_train.app import run_dirs, validation
from lsa_train.app.errors import ConfigError, one_line
from lsa_train.trust import TRUST_CHECKPOINT_KEY, TRUSTED_TARGETS_KEY, TrustPolicy

log = logging.getLogger(__name__)

#: Config groups a resume may switch: where and how the run continues, not what it trains.
RESUMABLE_GROUPS: tuple[str, ...] = ("trainer", "callbacks", "logger", "paths", "launcher", "hydra")
#: Keys that always come from this command line, never from the saved config.
COMMAND_LINE_KEYS: tuple[str, ...] = ("ckpt_path", TRUST_CHECKPOINT_KEY, TRUSTED_TARGETS_KEY)
#: Node whose values define the trained network.
_MODEL = "model"


@dataclass
class ResumePlan:
    """A resume of the run in ``run_dir``: the effective config and where it came from."""

    cfg: DictConfig
    run_dir: Path
    base_config: Path
    overrides: list[str]
    switched_groups: dict[str, str] = field(default_factory=dict)
    signed: bool = False
    #: What the group switches changed: ``{"key", "was", "now", "group"}`` per key (see :func:`merge_group_switch`).
    group_changes: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> Path:
        """Writes ``<run>/.hydra/resumes/<date>_<time>/{config,overrides}.yaml`` (atomically); returns the folder.

        The run's signature then covers the new record when the run was signed (the user's own); a foreign
        run is never signed by a resume."""
        from lsa_train.utils.io import atomic_write_text

        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        folder = self.run_dir / run_dirs.RESUMES_DIR / stamp
        suffix = 1
        while folder.exists():
            folder = self.run_dir / run_dirs.RESUMES_DIR / f"{stamp}_{suffix}"
            suffix += 1
        folder.mkdir(parents=True)
        atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(self.cfg))
        atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(self.overrides))))
        if self.signed:
            from lsa_train.signing import sign_run

            sign_run(self.run_dir)
        return folder

    def summary(self) -> dict[str, Any]:
        """Facts for ``metrics.json`` / ``report.md``."""
        return {"run_dir": str(self.run_dir), "base_config": str(self.base_config), "overrides": self.overrides,
                "switched_groups": dict(self.switched_groups), "group_changes": list(self.group_changes),
                "signed": self.signed}


def latest_config(run_dir: Path) -> Path:
    """The config a resume of ``run_dir`` starts from: its latest resume's, else ``.hydra/config.yaml``."""
    resumes = sorted((run_dir / run_dirs.RESUMES_DIR).glob("*/config.yaml"))
    return resumes[-1] if resumes else run_dir / run_dirs.RUN_CONFIG


def saved_choices(run_dir: Path) -> dict[str, str | None]:
    """The run's config-group choices (``hydra.runtime.choices`` of ``.hydra/hydra.yaml``); ``{}`` if absent."""
    path = run_dir / run_dirs.HYDRA_CONFIG
    if not path.is_file():
        return {}
    try:
        node = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default=None)
    except Exception:  # a broken record is a missing one: group switches are then refused
        return {}
    return {str(k): (None if v is None else str(v)) for k, v in (node or {}).items()}


def run_choices(run_dir: Path) -> dict[str, str | None]:
    """The run's group choices as its latest resume left them: :func:`saved_choices`, then the group switches
    recorded in each ``.hydra/resumes/<stamp>/overrides.yaml`` in order (``trainer=gpu`` on an earlier resume
    makes ``gpu`` the run's trainer, as its latest config is)."""
    choices = saved_choices(run_dir)
    for record in sorted((run_dir / run_dirs.RESUMES_DIR).glob("*/overrides.yaml")):
        try:
            recorded = OmegaConf.load(record)
            parsed = validation.parse_overrides([str(o) for o in recorded]) if OmegaConf.is_list(recorded) else []
        except Exception:  # an unreadable record switches nothing; its config is still the base when latest
            continue
        for override in parsed:
            group = override.key_or_group
            if group in choices and group in RESUMABLE_GROUPS and not override.is_delete():
                choices[group] = str(override.value())
    return choices


def _current_groups() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    return set(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else set()


def plan_resume(cli_cfg: DictConfig, ckpt: Path, policy: TrustPolicy) -> ResumePlan | None:
    """The effective config of resuming the run of ``ckpt``; ``None`` when ``ckpt`` is not in a run
    folder with a saved config (then the command line's config is used, and the summary says so).

    Args:
        cli_cfg: The config composed from this command line.
        ckpt: The checked checkpoint path.
        policy: This command line's trust policy.

    Raises:
        ConfigError: A foreign ``_target_``, an unreadable saved config, or an override that would change
            what the run trains.
    """
    from lsa_train.app.checkpoint_loading import check_run_config, check_saved_targets, load_run_config

    run_dir = run_dirs.checkpoint_run_dir(ckpt)
    if run_dir is None:
        return None
    base = latest_config(run_dir)
    cfg = load_run_config(base)
    signed = check_run_config(cfg, policy, base)  # a foreign run's config must be plain data
    overrides = validation.hydra_task_overrides()
    switched, changes = _apply_overrides(cfg, cli_cfg, overrides, run_dir)
    with open_dict(cfg):
        for key in COMMAND_LINE_KEYS:
            cfg[key] = cli_cfg.get(key)
        cfg.paths.output_dir = str(run_dir)
    if not signed:  # what will be instantiated, before anything is imported
        check_saved_targets(cfg, policy, base)
    check_write_destinations(cfg, run_dir, overrides, switched, base)
    _adopt_run_choices(run_choices(run_dir), switched)
    return ResumePlan(cfg=cfg, run_dir=run_dir, base_config=base, overrides=list(overrides),
                      switched_groups=switched, signed=signed, group_changes=changes)


def _adopt_run_choices(choices: dict[str, str | None], switched: dict[str, str]) -> None:
    """Makes the current Hydra job's group choices the resumed run's (``data=tensors``, not this command
    line's default ``data=digits``), except the groups this command line switched: the summary, report and
    error messages name what the run trains."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    current = HydraConfig.get().runtime.choices
    with read_write(current), open_dict(current):
        for group, choice in choices.items():
            if not group.startswith("hydra/") and group not in switched and group in current:
                current[group] = choice


def check_write_destinations(
    cfg: DictConfig, run_dir: Path, overrides: list[str], switched: dict[str, str], base: Path
) -> None:
    """Refuses a saved config that would make the resume write outside its run folder.

    A resume writes checkpoints, logs and LSA figures where the saved config says (``dirpath``,
    ``save_dir``, ``default_root_dir``, ... under :data:`WRITING_NODES`). Those paths are data from the
    run folder: each must resolve into ``run_dir``. Keys this command line set (the key, a node above it,
    or a switched group such as ``logger=tensorboard``, whose paths come from ``conf/``) are not checked
    here but, like every path, by the write door once the trainer is built
    (:func:`lsa_train.writes.check_trainer_writes`), which also keeps them inside the run folder.

    Raises:
        ConfigError: One line naming the key, the path and how to allow it.
    """
    given = [o.key_or_group for o in validation.parse_overrides(overrides)]
    inside = run_dir.resolve()
    for key, value in _destinations(cfg):
        if key.split(".", 1)[0] in switched or any(key == g or key.startswith(g + ".") for g in given):
            continue
        leaf = key.rpartition(".")[2]
        text = str(value)
        if leaf == "filename":
            escapes = Path(text).is_absolute() or ".." in Path(text).parts
        else:
            escapes = not Path(text).expanduser().absolute().resolve().is_relative_to(inside)
        if escapes:
            raise ConfigError(
                f"'{base}' sets {key}={text}, outside the run folder '{run_dir}'; a resume writes only into its "
                f"run folder: give {key}=<path> inside '{run_dir}' on the command line"
            )


#: Top-level nodes whose path-valued keys (:data:`DESTINATION_KEYS`) name where a training run writes.
WRITING_NODES: tuple[str, ...] = ("trainer", "callbacks", "logger", "regularizer")
#: Keys of those nodes that name a folder (or, ``filename``, a file below one) a run writes to.
DESTINATION_KEYS: frozenset[str] = frozenset(
    {"dirpath", "save_dir", "default_root_dir", "root_dir", "log_dir", "logdir", "filename"})


def _destinations(cfg: DictConfig) -> list[tuple[str, Any]]:
    """``(dotted key, resolved value)`` of every destination key under :data:`WRITING_NODES`."""
    found: list[tuple[str, Any]] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            items = [(str(k), prefix + str(k)) for k in node]
        elif OmegaConf.is_list(node):
            items = [(i, f"{prefix}{i}") for i in range(len(node))]
        else:
            return
        for k, path in items:
            try:
                child = node[k]
            except Exception as err:  # an interpolation that cannot resolve is refused with its key
                raise ConfigError(f"cannot resolve {path} of the resumed run's config: {one_line(err)}") from err
            if OmegaConf.is_config(child):
                walk(child, path + ".")
            elif isinstance(k, str) and k in DESTINATION_KEYS and child is not None:
                found.append((path, child))

    for name in WRITING_NODES:
        if name in cfg:
            walk(cfg[name], name + ".")
    return found


def _apply_overrides(
    cfg: DictConfig, cli_cfg: DictConfig, overrides: list[str], run_dir: Path
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Applies this command line's ``overrides`` to the saved ``cfg``: group switches first, then values and
    deletions on top (as Hydra composes them). Returns the switched groups and the keys they changed."""
    try:
        parsed = validation.parse_overrides(overrides)
    except Exception as err:  # Hydra parsed them once already; this is a guard
        raise ConfigError(f"cannot read the overrides {overrides}: {one_line(err)}") from err
    groups = _current_groups()
    choices = run_choices(run_dir)
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
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"{group}={choice}"]
    try:
        if GlobalHydra.instance().is_initialized():  # inside the app: its own config search path
            composed = compose("train", overrides=overrides)
        else:
            with initialize_config_module("lsa_train.conf", version_base="1.3"):
                composed = compose("train", overrides=overrides)
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


def describe(plan: ResumePlan | None, ckpt: Path | None) -> str | None:
    """One line for the run summary: what a resume was based on."""
    if ckpt is None:
        return None
    if plan is None:
        return (f"resumed from '{ckpt}', which is not in a run folder with a saved config: the config of this "
                "command line was used, checked against the model, data, attack and module settings the checkpoint "
                "records")
    switched = ", ".join(f"{g}={c}" for g, c in plan.switched_groups.items())
    base = os.path.relpath(plan.base_config, plan.run_dir)
    origin = "" if plan.signed else " (a foreign run, not signed by you: its config was read as data)"
    changed = "; ".join(f"{c['key']}: {c['was']} -> {c['now']}" for c in plan.group_changes)
    kept = (f" ({switched} changed {changed}; the run's other values kept)" if changed else
            f" ({switched} changed no value of the run)") if switched else ""
    return (f"resumed the run in '{plan.run_dir}' from '{ckpt}' with its config '{base}'"
            + (f" and {switched}{kept}" if switched else "") + origin)
