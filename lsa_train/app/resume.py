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
come from this command line only. What defines the trained network cannot change on a resume: a group
choice other than those of :data:`~lsa_train.app.overrides.RESUMABLE_GROUPS` that differs from the run's, or
a changed ``model.*`` value, is refused in one line.

Switching a group (``trainer=gpu``) changes only the keys on which the new group's ``conf/`` file differs
from the run's (``trainer.accelerator``, ``trainer.devices``): the run's own values of every other key
(``trainer.max_epochs``, ``trainer.gradient_clip_val``, a callback's ``monitor``) are kept, and keys this
command line names go on top. The summary lists every key the switch changed. Applying this command line
onto the saved config (group switches merged by :func:`~lsa_train.app.overrides.merge_group_switch`, values,
deletions) is :mod:`lsa_train.app.overrides.saved_config`; this module finds the run, its base config and
group choices, checks what the resume may write and records it.

A resume must leave epochs to train, or it only tests the run (:func:`check_resume_epochs`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lsa_train.app import run_dirs
from lsa_train.app.errors import ConfigError, one_line
from lsa_train.app.overrides import (
    COMMAND_LINE_KEYS,
    RESUMABLE_GROUPS,
    apply_overrides,
    hydra_task_overrides,
    parse_overrides,
)
from lsa_train.trust import TrustPolicy, UntrustedTargetError, check_saved_config

log = logging.getLogger(__name__)


@dataclass
class ResumePlan:
    """A resume of the run in ``run_dir``: the effective config and where it came from."""

    cfg: DictConfig
    run_dir: Path
    base_config: Path
    overrides: list[str]
    switched_groups: dict[str, str] = field(default_factory=dict)
    signed: bool = False
    #: What the group switches changed: ``{"key", "was", "now", "group"}`` per key
    #: (see :func:`~lsa_train.app.overrides.merge_group_switch`).
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
            parsed = parse_overrides([str(o) for o in recorded]) if OmegaConf.is_list(recorded) else []
        except Exception:  # an unreadable record switches nothing; its config is still the base when latest
            continue
        for override in parsed:
            group = override.key_or_group
            if group in choices and group in RESUMABLE_GROUPS and not override.is_delete():
                choices[group] = str(override.value())
    return choices


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
    from lsa_train.app.checkpoint_loading import check_run_config, load_run_config

    run_dir = run_dirs.checkpoint_run_dir(ckpt)
    if run_dir is None:
        return None
    base = latest_config(run_dir)
    cfg = load_run_config(base)
    signed = check_run_config(cfg, policy, base)  # a foreign run's config must be plain data
    overrides = hydra_task_overrides()
    choices = run_choices(run_dir)
    switched, changes = apply_overrides(cfg, cli_cfg, overrides, run_dir, choices)
    with open_dict(cfg):
        for key in COMMAND_LINE_KEYS:
            cfg[key] = cli_cfg.get(key)
        cfg.paths.output_dir = str(run_dir)
    if not signed:  # what will be instantiated, before anything is imported
        check_saved_targets(cfg, policy, base)
    check_write_destinations(cfg, run_dir, overrides, switched, base)
    _adopt_run_choices(choices, switched)
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
    given = [o.key_or_group for o in parse_overrides(overrides)]
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


def check_saved_targets(cfg: DictConfig, policy: TrustPolicy, source: Path) -> None:
    """:func:`lsa_train.trust.check_saved_config` as a one-line :class:`ConfigError`."""
    try:
        check_saved_config(cfg, policy, source)
    except UntrustedTargetError as err:
        raise ConfigError(str(err)) from err


def completed_epochs(checkpoint: Mapping[str, Any]) -> int:
    """The epochs whose training a Lightning checkpoint holds: the fit loop's ``processed`` epochs (a checkpoint
    written at the end of an epoch counts it as processed but not yet ``completed``), else ``completed``, else
    its ``epoch``."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    current = progress.get("current", {}) if isinstance(progress, Mapping) else {}
    for key in ("processed", "completed"):
        if isinstance(current.get(key), int):
            return int(current[key])
    return int(checkpoint.get("epoch", 0))


def check_resume_epochs(max_epochs: Any, checkpoint: Mapping[str, Any], ckpt: Path) -> str | None:
    """A resume must leave ``trainer.max_epochs`` at least the epochs ``ckpt`` finished; returns a note for the
    summary when none is left to train (the run is then only tested).

    Raises:
        ConfigError: ``max_epochs`` is below the finished epochs.
    """
    done = completed_epochs(checkpoint)
    if max_epochs is None or int(max_epochs) < 0:
        return None
    if int(max_epochs) < done:
        raise ConfigError(f"trainer.max_epochs={max_epochs} but ckpt_path='{ckpt}' has finished {done} epochs; "
                          f"set trainer.max_epochs to more than {done} to train further")
    if int(max_epochs) == done:
        return (f"ckpt_path has finished all trainer.max_epochs={max_epochs} epochs: nothing was trained, the run was "
                "only tested (set trainer.max_epochs higher to train further)")
    return None


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
