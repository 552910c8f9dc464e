"""Builds the training objects from the composed config (``hydra.utils.instantiate`` where a node has a
``_target_``). Constructor errors become one-line :class:`~lsa_train.app.errors.ConfigError` s."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import hydra
from lightning import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lsa_train import factory
from lsa_train.app.errors import ConfigError, config_section, one_line
from lsa_train.app.overrides import hydra_choice
from lsa_train.app.schemas import ATTACK_APP_KEYS, BaseLoss, MVLMode
from lsa_train.app.validation import check_eps_grid, lambda_values
from lsa_train.attacks import Attack
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, MVLRefreshCallback

log = logging.getLogger(__name__)

#: ``every_n_epochs`` that never comes: ``mvl.mode=once`` analyses at fit start only.
_NEVER = 10**9


def _where(group: str) -> str:
    choice = hydra_choice(group)
    return f"{group}={choice}" if choice else group


def _instantiate(node: Any, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with constructor errors turned into one-line config errors."""
    return _instantiate_wrapped(lambda: hydra.utils.instantiate(node, **kwargs), where)


# -- data and model -----------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig) -> LightningDataModule:
    """The datamodule of ``cfg.data`` (class facts such as ``input_shape`` are known without setup)."""
    with config_section(_where("data")):
        return _instantiate_wrapped(lambda: factory.build_data(cfg.data), _where("data"))


def model_display_name(model_cfg: Any) -> str:
    """``model.name`` when the node has one, else the class name of its ``_target_``."""
    name = model_cfg.get("name") if isinstance(model_cfg, DictConfig) else None
    return str(name) if name is not None else str(model_cfg.get("_target_", "model")).rsplit(".", 1)[-1]


def build_model(cfg: DictConfig, datamodule: Any, *, trust: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``cfg.model`` for this data (``???`` keys from the data, ``model.checkpoint``
    loaded, see :func:`lsa_train.factory.build_model`); returns it and the resolved arguments.

    ``trust`` (full unpickling and TorchScript for ``model.checkpoint``) is the current command line's
    ``trust_checkpoint``, passed explicitly: never read from ``cfg``, which may be a saved run's config."""
    where = f"{_where('model')} ({model_label(cfg.model)})"
    with config_section(where):
        facts = factory.data_facts(datamodule)
        return _instantiate_wrapped(
            lambda: factory.build_model(cfg.model, facts=facts, trust_checkpoint=trust), where
        )


def model_label(model_cfg: Any) -> str:
    """``model.name=<name>`` for named models, else ``model._target_=<target>``."""
    name = model_cfg.get("name") if isinstance(model_cfg, DictConfig) else None
    return f"model.name={name!r}" if name is not None else f"model._target_={model_cfg.get('_target_')}"


def _instantiate_wrapped(build: Any, where: str) -> Any:
    try:
        return build()
    except hydra.errors.InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        raise ConfigError(f"{where}: {one_line(cause)}") from err


# -- attack and regularizer ---------------------------------------------------------------------
def build_attack(cfg: DictConfig) -> tuple[Attack, str]:
    """The training attack of ``cfg.attack`` and its base loss name (``ce``, ``trades``, ``normal``)."""
    node = OmegaConf.to_container(cfg.attack, resolve=True, enum_to_str=True)
    assert isinstance(node, dict)
    base_loss = BaseLoss(node.get("base_loss", "ce")).value
    for key in ATTACK_APP_KEYS:
        node.pop(key, None)
    attack = _instantiate(node, _where("attack"))
    return attack, base_loss


@dataclass
class RegularizerParts:
    """What ``cfg.regularizer`` turns into: the term, the module's MVL arguments and the callback."""

    regularizer: LayerwiseRegularizer | None
    probes: Any
    mvl: list[Any] | None
    callback: MVLRefreshCallback | None
    #: The run summary's line on the MVL analysis when it does not choose the regularized layers.
    analysis_note: str | None = None


def mvl_analysis_plan(regularizer: DictConfig) -> tuple[bool, str | None]:
    """Whether training runs the per-epoch MVL analysis, and the summary line saying why when the MVL it
    picks is not what the LSA term regularizes.

    With ``lambda`` 0 the MVL enters no loss, so the analysis (PGD plus a probed forward on
    ``mvl.num_samples`` samples every ``every_n_epochs`` epochs) would cost time for nothing: it is skipped
    unless ``mvl.log_analysis=true`` asks for it as a measurement. With ``mode=fixed`` it only measures,
    and runs unless ``log_analysis=false``.
    """
    mode = MVLMode(regularizer.mvl.mode)
    wanted = regularizer.mvl.get("log_analysis")
    lam = lambda_values(regularizer)
    off = all(g == 0 for g in (lam if isinstance(lam, list) else [lam]))
    if mode is MVLMode.none:
        return False, ("MVL analysis: skipped (lambda = 0, regularizer.mvl.mode=none)" if off
                       else None)  # lambda > 0 with mode none is refused by check_regularizer
    if off:
        if wanted is True:
            return True, ("MVL analysis: run as a measurement (regularizer.mvl.log_analysis=true); "
                          "lambda = 0, so the MVL is not regularized")
        return False, ("MVL analysis: skipped (lambda = 0); regularizer.mvl.log_analysis=true runs it as a "
                       "measurement")
    if mode is MVLMode.fixed:
        return wanted is not False, None
    return True, None


def build_regularizer(cfg: DictConfig) -> RegularizerParts:
    """The :class:`LayerwiseRegularizer` (``lambda`` is its ``gamma``) and the MVL machinery.

    ``mvl.mode``: ``auto`` adds an :class:`MVLRefreshCallback` refreshing every ``every_n_epochs``;
    ``once`` the same callback analysing at fit start only; ``fixed`` hands ``layers`` to the module
    (plus a callback with ``fixed=layers`` that only analyses and plots, unless ``log_analysis=false``);
    ``none`` neither. With ``lambda`` 0 there is no callback unless ``log_analysis=true``
    (see :func:`mvl_analysis_plan`).
    """
    reg = cfg.regularizer
    mvl_cfg = reg.mvl
    mode = MVLMode(mvl_cfg.mode)
    lam = lambda_values(reg)
    analyse, analysis_note = mvl_analysis_plan(reg)
    with config_section(_where("regularizer")):
        term = LayerwiseRegularizer(
            gamma=lam, measure=reg.measure, stop_clean_grad=bool(reg.stop_clean_grad),
            checkpoint_clean=bool(reg.get("checkpoint_clean", False)),
        )
    probes = OmegaConf.to_container(mvl_cfg.probes) if OmegaConf.is_config(mvl_cfg.probes) else mvl_cfg.probes
    layers = list(OmegaConf.to_container(mvl_cfg.layers)) if mvl_cfg.layers is not None else None
    callback = None
    if analyse:
        with config_section("regularizer.mvl"):
            callback = MVLRefreshCallback(
                every_n_epochs=_NEVER if mode is MVLMode.once else int(mvl_cfg.every_n_epochs),
                num_samples=int(mvl_cfg.num_samples),
                perturbation=str(mvl_cfg.perturbation),
                eta=None if mvl_cfg.top_k is not None else mvl_cfg.eta,
                top_k=mvl_cfg.top_k,
                min_layers=int(mvl_cfg.min_layers),
                fixed=layers if mode is MVLMode.fixed else None,
                measure=str(reg.measure),
                plot=bool(mvl_cfg.plot),
                dirpath=mvl_cfg.dirpath,
                attack_kwargs=OmegaConf.to_container(mvl_cfg.perturbation_kwargs, resolve=True),
            )
    return RegularizerParts(
        regularizer=term,
        probes=probes,
        mvl=layers if mode is MVLMode.fixed else None,
        callback=callback,
        analysis_note=analysis_note,
    )


# -- module, callbacks, loggers, trainer -------------------------------------------------------
def build_module(
    cfg: DictConfig, model: nn.Module, attack: Attack, base_loss: str, parts: RegularizerParts, num_classes: int
) -> LSARegularizedModule:
    """The :class:`LSARegularizedModule` of ``cfg.module`` with the optimizer/scheduler partials."""
    optimizer = _instantiate(cfg.optimizer, _where("optimizer"))
    scheduler = _instantiate(cfg.scheduler, _where("scheduler")) if cfg.get("scheduler") else None
    for name, partial in (("optimizer", optimizer), ("scheduler", scheduler)):
        if partial is not None and not callable(partial):
            raise ConfigError(f"{_where(name)}: expected a `_partial_: true` {name} config")
    with config_section(_where("optimizer")):  # a dry build: bad values (lr=-1) fail now, not mid-fit
        trial = optimizer(model.parameters())
    if scheduler is not None:
        with config_section(_where("scheduler")):
            scheduler(trial)
    grid = {"test_eps_grid": list(test_eps_grid(cfg))} if "test_eps_grid" in cfg.module else {}
    return _instantiate(
        cfg.module,
        "module",
        _convert_="all",
        **grid,
        model=model,
        attack=attack,
        base_loss=base_loss,
        regularizer=parts.regularizer,
        optimizer=optimizer,
        scheduler=scheduler,
        probes=parts.probes,
        mvl=parts.mvl,
        num_classes=num_classes,
    )


def test_eps_grid(cfg: DictConfig) -> tuple[float, ...]:
    """The FGSM radii of the training run's test sweep for ``module.test_eps_grid=auto``: 0, 1, ..., 5 times
    ``attack.eval_eps`` (the Linf budget robust accuracy is measured at; by default the training eps), capped at
    1, so the R&G score sums the paper's grid at eps 0.1 and the same multiples at any other budget.

    Raises:
        ConfigError: ``test_eps_grid`` neither ``auto`` nor a list of numbers >= 0.
    """
    from lsa_train.evaluation.robustness import eps_multiples_grid

    value = cfg.module.get("test_eps_grid")
    check_eps_grid("module.test_eps_grid", value, "0, 1, ..., 5 x attack.eval_eps")
    if value == "auto":
        return eps_multiples_grid(float(cfg.attack.eval_eps))
    return tuple(float(e) for e in value)


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[Callback]:
    """Every ``_target_`` entry of ``cfg.callbacks`` (``LearningRateMonitor`` is skipped without a logger)."""
    callbacks: list[Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        callback = _instantiate(node, f"callbacks.{name}")
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            log.info("logger=none: skipping the LearningRateMonitor callback")
            continue
        callbacks.append(callback)
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Every ``_target_`` entry of ``cfg.logger``."""
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            loggers.append(_instantiate(node, f"logger.{name}"))
    return loggers


def determinism_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Lightning's own switches for the top-level ``deterministic`` key: ``deterministic="warn"`` (deterministic
    algorithms, warning where an op has none) and ``benchmark=False`` (no cuDNN autotuning) when true."""
    if not bool(cfg.get("deterministic", False)):
        return {"deterministic": False}
    if cfg.trainer.get("benchmark"):
        log.info("deterministic=true: trainer.benchmark is turned off (set deterministic=false for cuDNN autotuning)")
    return {"deterministic": "warn", "benchmark": False}


def build_trainer(
    cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger], checkpoint_io: Any = None
) -> Trainer:
    """The Lightning ``Trainer`` of ``cfg.trainer`` (determinism from the top-level ``deterministic``), writing
    checkpoints through ``checkpoint_io`` unless ``trainer.plugins`` is set (then the user's plugins are kept)."""
    extra = {"plugins": [checkpoint_io]} if checkpoint_io is not None and cfg.trainer.get("plugins") is None else {}
    return _instantiate(cfg.trainer, _where("trainer"), callbacks=callbacks, logger=loggers or False,
                        **extra, **determinism_arguments(cfg))
