"""Loading checkpoints and run folders for ``lsa-evaluate`` and ``lsa-analyze``: open checkpoints safely, find
a training run from its checkpoint, rebuild its data and network with :mod:`lsa_train.app.builders` and load
the trained weights, or build any ``model=`` + ``data=`` pair without a run. A resume of ``lsa-train``
(:mod:`lsa_train.app.resume`, which holds the resume's own logic) opens its checkpoint and run config
with the same functions.

Imports go one way: this module uses :mod:`~lsa_train.app.builders`, :mod:`~lsa_train.app.validation` and
:mod:`~lsa_train.app.overrides`, which never import it.

A training run dir (made by ``lsa-train``) looks like::

    <run>/.hydra/config.yaml        the composed training config
    <run>/checkpoints/last.ckpt     Lightning checkpoints of LSARegularizedModule (keys ``model.<...>``)

Every problem with the input (missing or corrupt checkpoint, no run config next to it, weights that
do not fit the rebuilt network) is a one-line :class:`~lsa_train.app.errors.ConfigError` naming the
file and what was expected. Files pass the trust boundary of :mod:`lsa_train.trust`: checkpoints are
read with ``weights_only=True``, a saved run config's ``_target_`` values are checked before anything is
imported, and trust comes only from the current command line (:func:`command_line_policy`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from lsa_train.app import builders, run_dirs, validation
from lsa_train.app.errors import ConfigError, one_line
from lsa_train.app.overrides import hydra_choice, hydra_task_overrides
from lsa_train.training.ema import checkpoint_averaging
from lsa_train.trust import (
    TrustPolicy,
    UntrustedError,
    UntrustedFileError,
    as_policy,
    check_checkpoint_link,
    policy_from_command_line,
    read_torch_file,
)

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

#: Prefix of the network's parameters in the state dict of ``LSARegularizedModule``.
MODEL_PREFIX = "model."
#: Folder of the checkpoints, relative to the run dir.
CHECKPOINT_DIR = run_dirs.CHECKPOINT_DIR
#: The run's composed config, relative to the run dir.
RUN_CONFIG = run_dirs.RUN_CONFIG
#: Name of the OmegaConf resolver that places the output dir next to the training run.
RUN_SUBDIR_RESOLVER = run_dirs.RUN_SUBDIR_RESOLVER
run_subdir = run_dirs.run_subdir
register_resolvers = run_dirs.register_resolvers


# -- the trust of this command line -----------------------------------------------------------
def command_line_policy(cfg: DictConfig) -> TrustPolicy:
    """The :class:`~lsa_train.trust.TrustPolicy` of the current command line: ``trust_checkpoint``,
    ``trusted_targets`` and the ``<key>._target_=...`` overrides (never a saved run's values)."""
    try:
        return policy_from_command_line(cfg, hydra_task_overrides())
    except ValueError as err:
        raise ConfigError(str(err)) from err


# -- the checkpoint and the run config --------------------------------------------------------
def _checkpoints_near(path: Path, shown: int = 4) -> str:
    """``"checkpoints there: ..."`` naming the ``.ckpt`` files where ``path`` points (a run dir, its
    ``checkpoints/``, or the folder of a misspelled file), ``last.ckpt`` first; empty when there are none."""
    folders = [path, path / CHECKPOINT_DIR] if path.is_dir() else [path.parent]
    for folder in folders:
        found = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
        if found:
            last = [f for f in found if f.name == "last.ckpt"]
            ordered = last + [f for f in found if f.name != "last.ckpt"]
            names = ", ".join(str(f) for f in ordered[:shown])
            more = f" and {len(found) - shown} more" if len(found) > shown else ""
            return f"checkpoints there: {names}{more}"
    return ""


def check_ckpt_file(ckpt_path: Any) -> Path:
    """``ckpt_path`` names an existing file, not a symlink out of its run folder; returns it (``~`` expanded)."""
    if ckpt_path is None or str(ckpt_path).strip() == "":
        raise ConfigError("ckpt_path is required: give a checkpoint of a training run, "
                          "e.g. ckpt_path=<run dir>/checkpoints/last.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        kind = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        hint = _checkpoints_near(path) or "give a checkpoint of a training run, such as <run dir>/checkpoints/last.ckpt"
        raise ConfigError(f"ckpt_path='{ckpt_path}' {kind} (looked at '{path.absolute()}'); {hint}")
    try:
        check_checkpoint_link(path)
    except UntrustedError as err:
        raise ConfigError(str(err)) from err
    return path


def load_checkpoint(path: Path, trust: bool | TrustPolicy = False) -> tuple[dict[str, Any], bool]:
    """The Lightning checkpoint in ``path``, read on the CPU with ``weights_only=True``; returns it and
    whether the safe loader sufficed (``False`` only when ``trust`` allowed full unpickling).

    Raises:
        ConfigError: A file the safe loader refuses or TorchScript (unless ``trust``; the message names
            ``trust_checkpoint=true``), an unreadable or corrupt file, or no ``state_dict`` in it.
    """
    policy = as_policy(trust)
    try:
        checkpoint, safe = read_torch_file(path, what="checkpoint"), True
    except UntrustedFileError as err:
        if not policy.unpickle:
            raise ConfigError(f"ckpt_path='{path}' was not loaded: {one_line(err)}") from err
        checkpoint, safe = read_torch_file(path, trust=policy, what="checkpoint"), False
    except (ValueError, OSError) as err:
        raise _corrupt(path, err) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ConfigError(
            f"ckpt_path='{path}' is not a Lightning checkpoint (it has no 'state_dict'); give a checkpoint "
            "written by lsa-train, such as <run dir>/checkpoints/last.ckpt"
        )
    return checkpoint, safe


def check_ckpt_path(ckpt_path: str | None, trust: bool | TrustPolicy = False) -> tuple[Path, dict[str, Any]] | None:
    """``None``, or the path and content of ``ckpt_path``, a Lightning checkpoint that loads (see
    :func:`load_checkpoint`)."""
    if ckpt_path is None:
        return None
    path = check_ckpt_file(ckpt_path)
    return path, load_checkpoint(path, trust)[0]


def weights_label(checkpoint: Mapping[str, Any], path: Path | None) -> str:
    """Which weights a Lightning checkpoint holds, for the training summary and the evaluation alike:
    ``last (after 3 epochs, step 30)`` for the run's ``last.ckpt``, ``best by val/acc_pgd = 0.6125 (after 2
    epochs, step 20)`` for the best epoch of a monitored ``ModelCheckpoint`` (its state in the checkpoint names
    the file), else ``'<file name>' (after ...)``. The checkpoint is data: values of the wrong type are left out."""
    epoch, step = checkpoint.get("epoch"), checkpoint.get("global_step")
    done = int(epoch) + 1 if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    when = ", ".join(part for part in (
        None if done is None else f"after {done} epoch{'s' if done != 1 else ''}",
        f"step {step}" if isinstance(step, int) and not isinstance(step, bool) else None) if part)
    when = f" ({when})" if when else ""
    name = path.name if path is not None else None
    states = checkpoint.get("callbacks")
    for state in states.values() if isinstance(states, Mapping) else []:
        if not isinstance(state, Mapping) or name is None:
            continue
        saved = state.get("best_model_path")
        if not isinstance(saved, str) or Path(saved).name != name:
            continue
        monitor, score = state.get("monitor"), state.get("best_model_score")
        if monitor is None:  # a ModelCheckpoint without a monitor rewrites its file every epoch
            return f"last{when}"
        try:
            value = f" = {float(score):.4f}"
        except (TypeError, ValueError, RuntimeError):
            value = ""
        return f"best by {monitor}{value}{when}"
    if name == "last.ckpt":
        return f"last{when}"
    return f"'{name}'{when}" if name else f"checkpoint{when}"


def _corrupt(path: Path, err: BaseException) -> ConfigError:
    return ConfigError(
        f"ckpt_path='{path}' cannot be loaded, the file is corrupt or not a PyTorch checkpoint "
        f"({type(err).__name__}: {one_line(err)[:160]}); expected a Lightning .ckpt written by lsa-train"
    )


def find_run_config(ckpt: Path, run_config: Any = None) -> Path:
    """The training config of the run that wrote ``ckpt``: ``run_config`` when given, else
    ``<run>/.hydra/config.yaml`` with ``ckpt`` in ``<run>/checkpoints/`` (or in ``<run>/``)."""
    if run_config is not None:
        path = Path(str(run_config)).expanduser()
        if not path.is_file():
            raise ConfigError(f"run_config='{run_config}' does not exist (looked at '{path.absolute()}'); "
                              "give the training run's .hydra/config.yaml")
        return path
    folder = Path(os.path.abspath(ckpt)).parent  # as given: a symlink does not lead to another run's config
    candidates = [folder.parent / RUN_CONFIG] if folder.name == CHECKPOINT_DIR else []
    candidates.append(folder / RUN_CONFIG)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no training config next to ckpt_path='{ckpt}': expected '{candidates[0]}' (a checkpoint in "
        "<run dir>/checkpoints/ of a run made by lsa-train, whose <run dir>/.hydra/config.yaml it reads); "
        "or set run_config=<path to that config.yaml>, or give model=<its model> data=<its data> "
        "model.checkpoint=<the .ckpt> instead of ckpt_path (the budget it records is then the default)"
    )


def load_run_config(path: Path) -> DictConfig:
    """The composed training config saved by Hydra (``train.yaml`` with its groups)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"run config '{path}' cannot be read ({type(err).__name__}: {one_line(err)[:160]})") from err
    if not isinstance(cfg, DictConfig) or "data" not in cfg or "model" not in cfg:
        raise ConfigError(f"run config '{path}' is not a composed lsa-train config (it lacks 'data' or 'model')")
    return cfg


# -- the run ----------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A network with its data: rebuilt from an lsa-train checkpoint and its run's config, or built from
    ``model=`` + ``data=`` (then the run fields are ``None``)."""

    ckpt_path: Path | None
    run_dir: Path | None
    run_config_path: Path | None
    run_cfg: DictConfig | None
    datamodule: Any
    model: Any
    model_kwargs: dict[str, Any]
    weights_only: bool
    epoch: int | None
    global_step: int | None
    model_cfg: Any = None
    signed: bool = False
    averaging: str | None = None  # the checkpoint's weights are an average (``EMA (decay 0.999)``), not the live ones
    #: Which weights the run's checkpoint holds (:func:`weights_label`), as the training summary names them.
    weights_label: str | None = None
    #: Lines for the report: what the checkpoint records and the run config do not agree on (data paths, ...).
    notes: list[str] = field(default_factory=list)
    #: The run record of ``model.checkpoint`` when it is an lsa-train checkpoint (its budget is then the default).
    record: dict[str, Any] | None = None

    @property
    def weights(self) -> str:
        """Where the weights came from: the run's checkpoint (``last (after 3 epochs, step 30): '<path>'``),
        ``model.checkpoint`` (with the tensors loaded), pretrained weights, or none."""
        if self.ckpt_path is not None:
            label = self.weights_label or f"epoch {self.epoch}, step {self.global_step}"
            averaged = f"; {self.averaging} weights" if self.averaging else ""
            return f"{label}{averaged}: '{self.ckpt_path}'"
        from lsa_train.factory import weights_source

        return weights_source(self.model_kwargs)

    @property
    def model_name(self) -> str:
        node = self.run_cfg.model if self.run_cfg is not None else self.model_cfg
        return builders.model_display_name(node) if node is not None else type(self.model).__name__

    def training_eps(self, keys: tuple[str, ...] = ("eval_eps", "eps"), setting: str = "pgd.eps") -> float:
        """The run's budget: ``attack.eval_eps`` (the budget it was tested at), else ``attack.eps``.

        Raises:
            ConfigError: No training run (``setting`` must be given), or no budget in its config.
        """
        if self.run_cfg is None:
            recorded = (self.record or {}).get("attack") or {}
            for key in keys:  # a model.checkpoint of lsa-train records its budget
                value = recorded.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
            raise ConfigError(f"{setting} is required when no ckpt_path of an lsa-train run is given "
                              f"(e.g. {setting}=0.03137 for 8/255 on [0, 1] inputs)")
        attack = self.run_cfg.get("attack") or {}
        for key in keys:
            value = OmegaConf.select(attack, key, default=None) if isinstance(attack, DictConfig) else None
            if value is not None:
                return float(value)
        raise ConfigError(f"run config '{self.run_config_path}' has no attack.eps; set {setting} explicitly")

    def attack_norm(self) -> str:
        attack = self.run_cfg.get("attack") if self.run_cfg is not None else None
        if attack is None and self.record is not None:
            norm = (self.record.get("attack") or {}).get("norm")
            return str(norm).lower() if isinstance(norm, str) else "linf"
        return str(attack.get("norm", "linf")).lower() if isinstance(attack, DictConfig) else "linf"


#: Keys of the ``data`` node of evaluate.yaml/analyze.yaml that are ``null`` unless overridden.
DATA_OVERRIDE_KEYS: tuple[str, ...] = ("batch_size", "eval_batch_size", "num_workers", "data_dir")


def data_overrides(node: Any) -> dict[str, Any]:
    """The non-null entries of the app's ``data`` node (merged into the run's data config)."""
    if node is None:
        return {}
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items() if v is not None}


def _has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and node.get("_target_") is not None


def _only_target(node: Any) -> bool:
    """A node that only names a ``_target_`` (``model._target_=...`` given to vouch for a run's class)."""
    return _has_target(node) and set(node.keys()) == {"_target_"}


def load_for_app(cfg: DictConfig) -> LoadedRun:
    """What ``lsa-evaluate``/``lsa-analyze`` work on: the run of ``cfg.ckpt_path``, or the pair
    ``cfg.model`` + ``cfg.data`` (``model=<name> data=<name>``, with ``model.checkpoint=<file>``).

    Trust comes from this command line only (:func:`command_line_policy`).

    Raises:
        ConfigError: Both or neither given, or anything :func:`load_run` / the builders refuse.
    """
    policy = command_line_policy(cfg)
    model_node, data_node = cfg.get("model"), cfg.get("data")
    if cfg.get("ckpt_path") is not None:
        if _has_target(model_node) and not _only_target(model_node):
            raise ConfigError(
                "give either ckpt_path (a checkpoint of an lsa-train run, whose model and data are rebuilt) or "
                "model=... data=... (any model; its weights with model.checkpoint=<file>), not both"
            )
        if _has_target(data_node) and not _only_target(data_node):
            choice = hydra_choice("data")
            raise ConfigError(
                f"{'data=' + choice if choice else 'data._target_=' + str(data_node.get('_target_'))}: with ckpt_path "
                "the run's own data is rebuilt (data.batch_size=... and the like may change); to evaluate its "
                "weights on other data, give model=... data=... with model.checkpoint=<the .ckpt> instead of ckpt_path"
            )
        vouched = {group: str(node.get("_target_")) for group, node in (("model", model_node), ("data", data_node))
                   if _has_target(node)}  # the run's own targets, given again to trust them
        overrides = {k: v for k, v in data_overrides(data_node).items() if k != "_target_"}
        return load_run(cfg.ckpt_path, cfg.get("run_config"), overrides, policy, vouched)
    missing = [group for group, node in (("model", model_node), ("data", data_node)) if not _has_target(node)]
    if missing:
        raise ConfigError(
            f"no ckpt_path and no {' and no '.join(f'{g}=' for g in missing)}: give ckpt_path=<run dir>/checkpoints/"
            "last.ckpt of an lsa-train run, or model=<name> and data=<name> (e.g. model=tv model.name=tv:resnet18 "
            "model.weights=DEFAULT data=imagefolder data.root=<dir>)"
        )
    data = OmegaConf.to_container(data_node, resolve=True)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if not (k in DATA_OVERRIDE_KEYS and v is None)}
    weights_file = OmegaConf.select(model_node, "checkpoint", default=None)
    record = read_weights_record(weights_file)
    split_note = adopt_recorded_split(data, record, hydra_task_overrides())
    app_cfg = OmegaConf.create({"model": model_node, "data": data})
    validation.check_model_name(app_cfg.model)
    datamodule = builders.build_datamodule(app_cfg)
    prepare_data(datamodule)
    model, kwargs = builders.build_model(app_cfg, datamodule, trust=policy.unpickle)
    model.eval()
    notes = [*([split_note] if split_note else []), *record_notes(weights_file, record, app_cfg)]
    return LoadedRun(
        ckpt_path=None, run_dir=None, run_config_path=None, run_cfg=None, datamodule=datamodule, model=model,
        model_kwargs=kwargs, weights_only=True, epoch=None, global_step=None, model_cfg=app_cfg.model,
        notes=notes, record=record,
    )


def read_weights_record(weights_file: Any) -> dict[str, Any] | None:
    """The run record of a ``model.checkpoint`` written by lsa-train, or ``None`` (no file, another kind of file,
    unreadable). Read with ``weights_only=True``; the record is data, checked to be plain.

    Raises:
        ConfigError: A record that is not plain data (:func:`lsa_train.app.checkpoint_record.saved_record`).
    """
    from lsa_train.app.checkpoint_record import saved_record

    if weights_file is None:
        return None
    path = Path(str(weights_file)).expanduser()
    try:
        content = read_torch_file(path, what="weights file")
    except (UntrustedError, ValueError, OSError):
        return None
    return saved_record(content, path) if isinstance(content, Mapping) else None


def adopt_recorded_split(data: dict[str, Any], record: Mapping[str, Any] | None, overrides: list[str]) -> str | None:
    """Evaluates an lsa-train checkpoint on the split it was trained with: the embedded data sets (digits, moons,
    ...) draw their train/val/test split with ``data.seed``, which here would follow this app's ``seed`` (PGD's)
    and could put training points in the test split. Same data class, ``data.seed`` not on this command line:
    ``data["seed"]`` becomes the record's (in place), and the returned line says so.

    Args:
        data: The resolved ``data`` node of this command line (changed in place).
        record: :func:`read_weights_record` of ``model.checkpoint``.
        overrides: This command line's overrides; ``data.seed=...`` among them keeps that seed.

    Returns:
        The report line, or ``None`` when nothing was adopted.
    """
    from lsa_train.app.overrides import names_key

    recorded = (record or {}).get("data")
    if not isinstance(recorded, Mapping) or "seed" not in data or not isinstance(recorded.get("seed"), int):
        return None
    if recorded.get("_target_") != data.get("_target_") or names_key(overrides, "data.seed"):
        return None
    if data["seed"] == recorded["seed"]:
        return None
    data["seed"] = recorded["seed"]
    return (f"data.seed={recorded['seed']}: the split model.checkpoint was trained with (its run record), so its "
            "training points stay out of the evaluated split; data.seed=<n> on the command line draws another")


def record_notes(weights_file: Any, record: Mapping[str, Any] | None, app_cfg: DictConfig) -> list[str]:
    """Report lines on where the run record of ``model.checkpoint`` (:func:`read_weights_record`) differs from
    ``model=`` / ``data=`` here (evaluating trained weights on other data is allowed: every difference is a line,
    never an error). Its budget becomes the default ``pgd.eps``/``eps`` (:class:`LoadedRun`)."""
    from lsa_train.app.checkpoint_record import NOTE_KEYS, compare_records, run_record

    if record is None:
        return []
    here = {k: v for k, v in run_record(app_cfg).items() if k in ("model", "data")}
    errors, notes = compare_records({k: record.get(k) for k in here}, here)
    lines = [line for line in errors + notes if line.split("=", 1)[0] not in NOTE_KEYS or
             not line.startswith("model.")]  # model.checkpoint/strict: how the weights are loaded here
    return [f"model.checkpoint='{weights_file}' is an lsa-train checkpoint trained otherwise than given here: "
            f"{line}" for line in lines]


def prepare_data(datamodule: Any) -> None:
    """Downloads with ``data.download=true`` (``prepare_data``), then checks the files are there."""
    if getattr(datamodule, "download", False) and hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    validation.check_dataset_available(datamodule)


def load_run(
    ckpt_path: Any,
    run_config: Any = None,
    data: Mapping[str, Any] | None = None,
    trust: bool | TrustPolicy = False,
    vouched: Mapping[str, str] | None = None,
) -> LoadedRun:
    """Checks ``ckpt_path``, finds its run config, checks the config's targets, rebuilds datamodule and
    network, loads the weights.

    Args:
        ckpt_path: ``<run dir>/checkpoints/<name>.ckpt``.
        run_config: The run's ``.hydra/config.yaml`` if it is not next to the checkpoint.
        data: Overrides of the run's ``data`` config (``batch_size``, ``data_dir``, ...).
        trust: The current command line's :class:`~lsa_train.trust.TrustPolicy` (or a plain flag: allow
            full unpickling of a checkpoint the safe loader refuses). Never read from the run's config.
        vouched: ``{group: target}`` given on the command line to trust the run's own ``<group>._target_``;
            each must equal the run's (they name the run's classes, they do not replace them).
    """
    policy = as_policy(trust)
    ckpt = check_ckpt_file(ckpt_path)
    config_path = find_run_config(ckpt, run_config)
    run_cfg = load_run_config(config_path)
    for group, target in (vouched or {}).items():
        saved = OmegaConf.select(run_cfg, f"{group}._target_", default=None, throw_on_missing=False)
        if str(saved) != target:
            raise ConfigError(
                f"{group}._target_={target} was given with ckpt_path, but the run's config '{config_path}' has "
                f"{group}._target_={saved}; with ckpt_path, a _target_ only vouches for the run's own class "
                f"(give {group}._target_={saved} or trusted_targets=[...]), or give model=... data=... without "
                "ckpt_path"
            )
    signed = check_run_config(run_cfg, policy, config_path)  # before anything it names is imported
    checkpoint, safe = load_checkpoint(ckpt, policy)
    notes: list[str] = []
    own_run = run_dirs.checkpoint_run_dir(ckpt)
    bare = own_run is None or own_run.absolute() != run_folder_of_config(config_path).absolute()
    if bare:
        # a checkpoint without its run folder, or with another run's config: it must have trained what that says
        from lsa_train.app.checkpoint_record import check_checkpoint_record

        notes = check_checkpoint_record(checkpoint, ckpt, run_cfg, f"run_config='{config_path}'")
    if data:
        run_cfg.data = OmegaConf.merge(run_cfg.data, dict(data))
    validation.check_model_name(run_cfg.model)
    datamodule = builders.build_datamodule(run_cfg)
    prepare_data(datamodule)
    if bare:  # the checkpoint's module records what it trained on: the classes and the probes
        from lsa_train.app.checkpoint_record import check_hyper_parameters

        probes = OmegaConf.select(run_cfg, "regularizer.mvl.probes", default=None)
        check_hyper_parameters(checkpoint, ckpt, {
            "num_classes": datamodule.num_classes,
            **({"probes": OmegaConf.to_container(probes) if OmegaConf.is_config(probes) else probes}
               if probes is not None else {})})
    model, kwargs = builders.build_model(run_cfg, datamodule, trust=policy.unpickle)
    load_weights(model, checkpoint["state_dict"], ckpt, config_path)
    model.eval()
    return LoadedRun(
        ckpt_path=ckpt, run_dir=config_path.parent.parent, run_config_path=config_path, run_cfg=run_cfg,
        datamodule=datamodule, model=model, model_kwargs=kwargs, weights_only=safe,
        epoch=checkpoint.get("epoch"), global_step=checkpoint.get("global_step"), signed=signed,
        averaging=checkpoint_averaging(checkpoint), weights_label=weights_label(checkpoint, ckpt), notes=notes,
    )


#: Keys of a saved run config that this command line sets (never read from the file).
COMMAND_LINE_CONFIG_KEYS: tuple[str, ...] = ("ckpt_path", "trust_checkpoint", "trusted_targets", "paths.output_dir")


def run_folder_of_config(config_path: Path) -> Path:
    """``<run>`` for ``<run>/.hydra/config.yaml`` (or a resume's ``<run>/.hydra/resumes/<stamp>/config.yaml``),
    else the config's folder."""
    for parent in config_path.parents:
        if parent.name == ".hydra":
            return parent.parent
    return config_path.parent


def check_run_config(cfg: DictConfig, policy: TrustPolicy, config_path: Path) -> bool:
    """Whether the run of ``config_path`` is the user's own (signed, :mod:`lsa_train.signing`): its config is
    then honoured as written. A foreign run's config must be plain data of the project's schema
    (:func:`lsa_train.foreign.check_foreign_config`); returns ``False`` for one that is.

    Raises:
        ConfigError: A foreign config that holds more than data, in one line.
    """
    from lsa_train.foreign import check_foreign_config
    from lsa_train.signing import verify_run

    verdict = verify_run(run_folder_of_config(config_path))
    if verdict.signed:
        return True
    try:
        check_foreign_config(cfg, policy, config_path, verdict.reason, ignore=COMMAND_LINE_CONFIG_KEYS)
    except UntrustedError as err:
        raise ConfigError(one_line(err)) from err
    return False


def model_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The network's entries of an ``LSARegularizedModule`` state dict, ``model.`` prefix stripped
    (a plain network state dict without the prefix is returned as it is)."""
    stripped = {k[len(MODEL_PREFIX):]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}
    return stripped or dict(state_dict)


def load_weights(model: Any, state_dict: Mapping[str, Any], ckpt: Path, config_path: Path) -> None:
    """``model.load_state_dict`` (strict) of the checkpoint's network weights."""
    weights = model_state_dict(state_dict)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        detail = f"missing {missing[:4]}, unexpected {unexpected[:4]}" if missing or unexpected else one_line(err)[:200]
        raise ConfigError(
            f"the weights of ckpt_path='{ckpt}' do not fit the network rebuilt from '{config_path}' ({detail}); "
            "use the run config that wrote this checkpoint"
        ) from err


# -- runtime ----------------------------------------------------------------------------------
def resolve_device(name: Any) -> Any:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...; refuses an absent GPU."""
    import torch

    text = str(name or "auto").lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is available; use device=cpu or device=auto")
    return device


@contextmanager
def torch_runtime(seed: Any, threads: Any) -> Iterator[None]:
    """Seeds torch (and Python, NumPy) and sets the intra-op threads for the block (restored after).

    ``threads``: an integer, ``None`` (torch's default) or ``auto`` (torch's default until the model is
    known: :func:`threads_for_model` then chooses)."""
    import lightning as L

    from lsa_train.utils.runtime import torch_threads

    validation.check_seed(seed)
    validation.check_torch_threads(threads)
    L.seed_everything(int(seed), workers=True, verbose=False)
    with torch_threads(None if threads is None or str(threads).lower() == "auto" else int(threads)):
        yield


def threads_for_model(setting: Any, model: nn.Module) -> int:
    """``torch_threads=auto`` applied once the model is known (1 thread for a small model, whose ops are too
    small to gain from more; torch's default for a large one), inside :func:`torch_runtime`, which restores
    the previous count. Returns the intra-op threads the work runs with."""
    import torch

    if str(setting).lower() == "auto":
        from lsa_train.app.pipeline import resolve_torch_threads

        threads = resolve_torch_threads("auto", model)
        if threads is not None:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def run_facts(run: LoadedRun) -> dict[str, Any]:
    """Facts about the evaluated run for reports (JSON-ready)."""
    data_name = type(run.datamodule).__name__
    if run.run_cfg is None:
        return {"model": run.model_name, "data": data_name, "weights": run.weights, "model_kwargs": run.model_kwargs,
                "weights_only_load": run.weights_only}
    setting = {
        "run_dir": str(run.run_dir),
        "run_config": str(run.run_config_path),
        "data": data_name,
        "model": run.model_name,
        "weights": run.weights,
        "checkpoint_epoch": run.epoch,
        "checkpoint_global_step": run.global_step,
        "weights_only_load": run.weights_only,
        "run_signed": run.signed,
    }
    if run.averaging:  # the checkpoint's state_dict is the average, as validated and tested in training
        setting["weight_averaging"] = run.averaging
    attack = run.run_cfg.get("attack")
    if isinstance(attack, DictConfig):
        setting["train_attack"] = str(attack.get("_target_", "")).rsplit(".", 1)[-1]
        setting["train_eps"] = OmegaConf.select(attack, "eps", default=None)
    return setting
