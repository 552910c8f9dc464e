"""Checks run by :func:`lsa_train.app.train.train` before anything is trained or checkpointed.

Each check raises a one-line :class:`~lsa_train.app.errors.ConfigError` naming the bad value and the
valid choices (or how to fix it). Typo'd keys, unknown group options and wrongly typed values are
caught earlier, by Hydra at compose time (see :mod:`lsa_train.app.schemas`); what the command line's
overrides themselves say and do (``+key``, inert settings, a derived ``attack.alpha``) is
:mod:`lsa_train.app.overrides`.

The checks of plain config values import no torch, so that such mistakes are reported at once; the
ones that need torch (devices, checkpoints, models) import it when called.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lsa_train.app.errors import ConfigError, one_line
from lsa_train.app.overrides import hydra_choice
from lsa_train.app.schemas import BaseLoss, MVLMode

if TYPE_CHECKING:
    from torch import nn


def _option(group: str, fallback: str) -> str:
    choice = hydra_choice(group)
    return f"{group}={choice}" if choice else fallback


# -- run environment ---------------------------------------------------------------------------
def check_trainer_device(trainer: DictConfig) -> None:
    """A GPU accelerator needs a visible CUDA device (and enough of them for ``devices``)."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda"):
        return
    where = _option("trainer", f"trainer.accelerator={accelerator}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{where} asks for accelerator '{accelerator}' but no CUDA GPU is available "
            "(torch.cuda.is_available() is False); use trainer=cpu or trainer=default"
        )
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={devices} but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
            f"set trainer.devices<={torch.cuda.device_count()}"
        )


def check_epochs_to_train(trainer: DictConfig) -> None:
    """A new run must train: ``trainer.max_epochs=0`` (or ``max_steps=0``) would only test the untrained
    network and report it as a run."""
    for key in ("max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}=0 trains nothing; set it to 1 or more (-1: no limit), or test a trained network "
                "with lsa-evaluate (ckpt_path=... resumes a run)"
            )


def check_output_dir(path: str | Path) -> Path:
    """``path`` exists (or can be created) and accepts files; returns it.

    Raises:
        ConfigError: It cannot be created or written to.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"output dir '{out}' (paths.output_dir) is not writable ({err.strerror or err}); "
            "set hydra.run.dir (or paths.log_dir) to a writable folder"
        ) from err
    return out


def check_torch_threads(threads: Any) -> None:
    """``torch_threads`` is ``auto``, ``None`` or an integer ``>= 1``."""
    if threads is None or str(threads).lower() == "auto":
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"torch_threads={threads} must be an integer >= 1, auto, or null for torch's default")


def check_seed(seed: Any) -> None:
    """``seed`` is an integer in ``[0, 2**32)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed} must be an integer in [0, 2**32), e.g. seed=313")


def check_top_level(cfg: DictConfig) -> None:
    """The plain top-level keys have the right types: ``seed`` an integer in [0, 2**32), ``deterministic``
    and ``trust_checkpoint`` booleans, ``tags`` a list, ``torch_threads`` see :func:`check_torch_threads`,
    ``ckpt_path``/``optimized_metric``/``task_name`` strings (or null)."""
    check_seed(cfg.get("seed"))
    for key in ("deterministic", "trust_checkpoint"):
        value = cfg.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value} must be true or false")
    tags = cfg.get("tags")
    if tags is not None and not isinstance(tags, ListConfig | list):
        raise ConfigError(f"tags={tags} must be a list, e.g. tags=[baseline,cifar10]")
    for key in ("ckpt_path", "optimized_metric", "task_name"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}={value} must be a string (or null)")
    check_torch_threads(cfg.get("torch_threads"))


def check_loggers(logger: DictConfig | None) -> None:
    """Loggers whose backend package is missing (TensorBoard, MLflow, W&B) are refused up front."""
    for name, node in (logger or {}).items():
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        if target.endswith("TensorBoardLogger") and not _tensorboard_available():
            raise ConfigError(
                f"logger '{name}' ({_option('logger', 'logger=tensorboard')}) needs the 'tensorboard' package, "
                "which is not installed; pip install tensorboard, or use logger=csv"
            )
        for logger_class, package in OPTIONAL_LOGGERS.items():
            if target.endswith(logger_class) and importlib.util.find_spec(package) is None:
                choice = hydra_choice("logger")  # logger=mlflow, or a config of the user's that names it
                shown = f"logger={package}" if choice in (None, package) else f"logger '{name}' (logger={choice})"
                raise ConfigError(f"{shown} needs the {package} package: pip install 'lsa-train[{package}]' "
                                  "(it is not installed; logger=csv needs nothing more)")


#: Loggers whose package is an optional extra of lsa-train (``pip install 'lsa-train[<package>]'``).
OPTIONAL_LOGGERS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(pkg) is not None for pkg in ("tensorboard", "tensorboardX"))


# -- attack and regularizer ---------------------------------------------------------------------
def check_attack(attack: DictConfig) -> None:
    """Budgets are finite and ``>= 0``."""
    where = _option("attack", "attack")
    for key in ("eps", "eval_eps", "alpha"):
        value = attack.get(key)
        if value is None:
            continue
        if not math.isfinite(float(value)) or float(value) < 0 or (key == "alpha" and float(value) == 0):
            rule = "> 0" if key == "alpha" else ">= 0"
            raise ConfigError(
                f"attack.{key}={value} is invalid for {where}: it must be a finite number {rule} "
                "(inputs are in [0, 1], e.g. attack.eps=0.1 or 0.03137 for 8/255)"
            )


def check_eps_grid(key: str, value: Any, auto: str) -> None:
    """An FGSM grid setting (``module.test_eps_grid``, ``fgsm.eps_grid``) is ``auto`` or a non-empty list of
    Linf radii >= 0.

    Args:
        key: The setting's key, for the message.
        value: Its value.
        auto: What ``auto`` means for it, for the message.

    Raises:
        ConfigError: Anything else, in one line naming the key, the value and both forms.
    """
    if value == "auto":
        return
    if not OmegaConf.is_list(value) or not len(value) or any(
            isinstance(e, bool) or not isinstance(e, int | float) or not e >= 0 for e in value):
        raise ConfigError(f"{key}={value} must be auto ({auto}) or a non-empty list of budgets >= 0 (include 0 for "
                          "R&G), e.g. [0,0.1,0.2]")


def lambda_values(regularizer: DictConfig) -> list[float] | float:
    """``regularizer.lambda`` as a float or a list of floats (validated: finite, ``>= 0``)."""
    raw = regularizer.get("lambda", 0.0)
    values = list(raw) if isinstance(raw, ListConfig | list | tuple) else [raw]
    if not values:
        raise ConfigError("regularizer.lambda=[] is empty; give one number, or one per MVL layer")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"regularizer.lambda={_show(raw)} is invalid: every value must be a finite number >= 0")
    return [float(v) for v in values] if isinstance(raw, ListConfig | list | tuple) else float(values[0])


def check_regularizer(regularizer: DictConfig, attack: DictConfig) -> None:
    """``lambda``, the MVL mode and the attack fit together (see :class:`~lsa_train.app.schemas.MVLMode`)."""
    lam = lambda_values(regularizer)
    mvl = regularizer.mvl
    mode = MVLMode(mvl.mode)
    active = any(g > 0 for g in (lam if isinstance(lam, list) else [lam]))
    base_loss = BaseLoss(attack.base_loss)
    if active and (base_loss is BaseLoss.normal or str(attack.get("_target_", "")).endswith("NoAttack")):
        raise ConfigError(
            f"regularizer.lambda={_show(lam)} compares clean and adversarial representations, but "
            f"{_option('attack', 'attack')} (base_loss={base_loss.value}) trains without adversarial examples; "
            "add regularizer=none (or regularizer.lambda=0), or pick an attack"
        )
    if active and mode is MVLMode.none:
        raise ConfigError(
            f"regularizer.mvl.mode=none with regularizer.lambda={_show(lam)}: the term needs an MVL; "
            "choose regularizer.mvl.mode from [auto, once, fixed]"
        )
    layers = list(mvl.layers) if mvl.layers is not None else None
    if mode is MVLMode.fixed and not layers:
        raise ConfigError(
            f"regularizer.mvl.mode=fixed needs regularizer.mvl.layers (probe indices or names, e.g. [2]), "
            f"got {_show(mvl.layers)}"
        )
    if mode in (MVLMode.auto, MVLMode.once):
        if mvl.top_k is not None and (mvl.top_k < 1):
            raise ConfigError(f"regularizer.mvl.top_k={mvl.top_k} must be an integer >= 1 (or null to use eta)")
        if mvl.top_k is None and (mvl.eta is None or not mvl.eta >= 0):
            raise ConfigError(f"regularizer.mvl.eta={mvl.eta} must be a number >= 0 (or set regularizer.mvl.top_k)")
        if mvl.min_layers < 0:
            raise ConfigError(
                f"regularizer.mvl.min_layers={mvl.min_layers} must be an integer >= 0 (0 allows an empty MVL)"
            )
    if mvl.every_n_epochs < 1:
        raise ConfigError(f"regularizer.mvl.every_n_epochs={mvl.every_n_epochs} must be an integer >= 1")
    if mvl.num_samples < 1:
        raise ConfigError(f"regularizer.mvl.num_samples={mvl.num_samples} must be an integer >= 1")
    if isinstance(lam, list):
        _check_lambda_length(lam, mode, layers, mvl.top_k)


#: Measures that compare each sample with another sample of its batch (need batches of 2 or more).
PAIRED_MEASURES: tuple[str, ...] = ("relative_error_pairwise",)


def check_paired_measure(regularizer: DictConfig, data: DictConfig) -> None:
    """``regularizer.measure=relative_error_pairwise`` normalizes each sample by its distance to another
    sample of the batch: training batches and the MVL analysis subset need 2 samples or more."""
    measure = str(regularizer.get("measure"))
    if measure not in PAIRED_MEASURES:
        return
    batch_size = data.get("batch_size")
    if isinstance(batch_size, int) and batch_size < 2:
        raise ConfigError(
            f"regularizer.measure={measure} pairs each sample with another one of its batch, but "
            f"data.batch_size={batch_size}; use data.batch_size >= 2 or regularizer.measure=relative_error"
        )
    if MVLMode(regularizer.mvl.mode) is not MVLMode.none and regularizer.mvl.num_samples < 2:
        raise ConfigError(
            f"regularizer.measure={measure} pairs each analysed sample with another one, but "
            f"regularizer.mvl.num_samples={regularizer.mvl.num_samples}; use 2 or more"
        )


def _check_lambda_length(lam: list[float], mode: MVLMode, layers: list[Any] | None, top_k: int | None) -> None:
    if mode is MVLMode.fixed:
        assert layers is not None
        if len(lam) != len(layers):
            raise ConfigError(
                f"regularizer.lambda={_show(lam)} has {len(lam)} values but the fixed MVL "
                f"regularizer.mvl.layers={_show(layers)} has {len(layers)}; give one lambda, or one per layer"
            )
    elif top_k is not None:
        if len(lam) != top_k:
            raise ConfigError(
                f"regularizer.lambda={_show(lam)} has {len(lam)} values but regularizer.mvl.top_k={top_k}; "
                "give one lambda, or one per MVL layer"
            )
    else:
        raise ConfigError(
            f"regularizer.lambda={_show(lam)} is a list, but the MVL size varies with "
            f"regularizer.mvl.mode={mode.value} and eta; use mvl.mode=fixed with {len(lam)} layers, "
            f"mvl.top_k={len(lam)}, or a single lambda"
        )


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return str(value).replace(" ", "")


# -- data and model -----------------------------------------------------------------------------
def check_dataset_available(datamodule: Any) -> None:
    """Torchvision data must be on disk unless ``data.download=true`` (nothing is fetched here)."""
    if getattr(datamodule, "download", True) or not hasattr(datamodule, "check_available"):
        return
    try:
        datamodule.check_available()
    except FileNotFoundError as err:
        raise ConfigError(f"{_option('data', 'data')}: {one_line(err)}") from err


#: The ``_target_`` of the built-in model configs, whose ``name`` is checked against the registry.
CREATE_MODEL_TARGET = "lsa_train.models.create_model"


def check_model_name(model: DictConfig) -> None:
    """For the registry's models (``_target_: lsa_train.models.create_model``): ``model.name`` is
    registered or ``tv:<torchvision classification model>``. Other targets are checked when built."""
    from lsa_train.models import TV_PREFIX, list_models

    if str(model.get("_target_")) != CREATE_MODEL_TARGET:
        return
    name = str(model.get("name"))
    if name.startswith(TV_PREFIX):
        from lsa_train.models.torchvision_models import torchvision_model_names

        known = torchvision_model_names()
        if name[len(TV_PREFIX) :] not in known:
            raise ConfigError(
                f"unknown torchvision model model.name={name!r}; choose 'tv:<name>' with <name> one of {known}"
            )
        return
    if name not in list_models():
        raise ConfigError(
            f"unknown model model.name={name!r}; choose one of {list_models()} or 'tv:<torchvision name>'"
        )


def check_model_input(model: nn.Module, name: str, input_shape: Sequence[int], num_classes: int) -> None:
    """One dry forward of two zero samples of the data's shape; logits must be ``(2, num_classes)``."""
    import torch

    from lsa_train.utils.modes import eval_mode

    shape = tuple(int(s) for s in input_shape)
    try:
        # eval_mode gives every submodule its own mode back (a frozen BatchNorm stays in eval)
        with torch.no_grad(), eval_mode(model):
            out = model(torch.zeros(2, *shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ConfigError(
            f"model {name} cannot take the data's input shape {shape} ({one_line(err)[:200]}); "
            "check model.input_size / model.in_channels, or choose another model"
        ) from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name} returns {got} for a batch of 2 inputs of shape {shape}, "
            f"expected logits (2, {num_classes}); check model.num_classes"
        )


def check_mvl_layers(
    model: nn.Module, input_shape: Sequence[int], probes: Any, layers: Sequence[Any] | None, min_layers: int = 0
) -> list[str]:
    """The probe spec matches the model, fixed MVL layers exist among its probes, and there are at least
    ``min_layers`` (``regularizer.mvl.min_layers`` of the eta rule) probes.

    Returns:
        What the user should know about the probes (one line each, for the run summary): e.g. the
        conv/linear layers that the default activation probes miss because their activations are functions.
    """
    import torch

    from lsa_train.analysis.probes import select_probes_and_notes

    spec = OmegaConf.to_container(probes) if isinstance(probes, ListConfig) else probes
    try:
        found, notes = select_probes_and_notes(model, torch.zeros(1, *input_shape), spec)
    except ValueError as err:
        raise ConfigError(f"regularizer.mvl.probes={_show(probes)}: {one_line(err)}") from err
    names = [p.name for p in found]
    if min_layers > len(names):
        raise ConfigError(
            f"regularizer.mvl.min_layers={min_layers} exceeds the model's {len(names)} {_show(probes)} probes: {names}"
        )
    for item in layers or []:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise ConfigError(
                    f"regularizer.mvl.layers has index {item}, out of range: the model has {len(names)} "
                    f"{_show(probes)} probes (0..{len(names) - 1}): {names}"
                )
        elif str(item) not in names:
            raise ConfigError(f"regularizer.mvl.layers names probe {item!r}, which the model lacks; probes: {names}")
    return [note.replace("probes=", "regularizer.mvl.probes=") for note in notes]
