"""``python -m lsa_train`` / ``lsa-train``: adversarial training with the LSA layer-wise term (AT-LR).

:func:`train` is a plain function of a composed config (tests call it with configs from Hydra's
compose API); :func:`hydra_main` is the thin ``@hydra.main`` task that returns the optimized metric
to sweepers; :func:`main` is the console entry point (one-line errors, see :mod:`lsa_train.app.cli`).

Examples:
    python -m lsa_train                                   # digits, model B, PGD-AT + LSA (auto MVL)
    python -m lsa_train model=resnet18 attack=pgd
    python -m lsa_train experiment=moons_model_a
    python -m lsa_train -m regularizer.lambda=0,0.1,1 seed=1,2,3
    python -m lsa_train ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt trainer.max_epochs=20
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lsa_train.app import overrides, validation
from lsa_train.app.cli import config_errors_to_cli, mark_task_started, run_cli
from lsa_train.app.errors import ConfigError, one_line
from lsa_train.app.report import failure_summary, write_metrics_json

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Checks the config, trains, tests the best (else last) weights and writes the run summary.

    With ``ckpt_path`` of a run folder, the run is resumed with its own config and this command line's
    overrides on top (:mod:`lsa_train.app.resume`).

    Args:
        cfg: A config composed from ``lsa_train.conf`` (``train.yaml``).

    Returns:
        All logged metrics (fit and test) as floats, and the objects that were built
        (``cfg``, ``datamodule``, ``model``, ``module``, ``trainer``, ``callbacks``, ``loggers``,
        ``summary``, ``only_tested``: a resume with no epoch left).

    Raises:
        ConfigError: A bad value, found before anything is trained or checkpointed.
    """
    started = time.perf_counter()
    overrides.check_added_keys("train", overrides.hydra_task_overrides())  # +key that nothing reads: refused
    _apply_extras(cfg)
    # Plain-value checks first: answered before torch and Lightning load.
    _check_plain_values(cfg)
    # Then the ones that need torch, but not Lightning.
    from lsa_train.app.checkpoint_loading import check_ckpt_path, command_line_policy
    from lsa_train.app.resume import check_resume_epochs, plan_resume

    policy = command_line_policy(cfg)  # trust comes from this command line, before any file is read
    checked = check_ckpt_path(cfg.get("ckpt_path"), policy)
    ckpt_path, resume, note, bare, record_notes = None, None, None, None, []
    if checked is not None:
        ckpt_path, checkpoint = checked
        resume = plan_resume(cfg, ckpt_path, policy)
        if resume is not None:  # the run's own config, this command line's overrides on top: checked again
            cfg = resume.cfg
            _check_plain_values(cfg)
        else:  # no run folder: what the checkpoint says it trained must be what this command line trains
            from lsa_train.app.checkpoint_record import check_checkpoint_record

            record_notes = check_checkpoint_record(checkpoint, ckpt_path, cfg, "this command line")
            bare = checkpoint
        note = check_resume_epochs(cfg.trainer.get("max_epochs"), checkpoint, ckpt_path)
    else:
        validation.check_epochs_to_train(cfg.trainer)
    validation.check_trainer_device(cfg.trainer)
    validation.check_model_name(cfg.model)
    from lsa_train.app.pipeline import run_training

    notes = ([note] if note else []) + record_notes
    # a resume derives the step from the run's first command line too, as its first start did
    first = overrides.run_first_overrides(resume.run_dir) if resume is not None else []
    derived = overrides.derive_attack_alpha(cfg.attack, [*first, *overrides.hydra_task_overrides()])
    notes += [derived] if derived else []
    notes += overrides.inert_overrides("train", cfg, overrides.hydra_task_overrides())
    if resume is None:
        notes += sign_new_run(Path(str(cfg.paths.output_dir)))

    metrics, objects = run_training(cfg, started, ckpt_path=str(ckpt_path) if ckpt_path else None, policy=policy,
                                    resume=resume, notes=notes, bare_checkpoint=bare)
    objects["only_tested"] = note is not None  # a resume with no epoch left: no fit or validation metrics
    return metrics, objects


def sign_new_run(run_dir: Path) -> list[str]:
    """Signs a new run folder as the user's own (:mod:`lsa_train.signing`); returns a summary line when it
    could not be signed (a later resume, evaluation or analysis then reads it as foreign)."""
    from lsa_train.signing import RUN_CONFIG, SigningError, sign_run

    if not (run_dir / RUN_CONFIG).is_file():
        return []
    try:
        sign_run(run_dir)
    except (SigningError, OSError) as err:
        log.warning("run not signed: %s", err)
        return [f"the run folder was not signed ({one_line(err)}): lsa_train reads it as a foreign run until "
                f"`lsa-trust {run_dir}`"]
    return []


def _check_plain_values(cfg: DictConfig) -> None:
    """The checks of plain config values (no torch, no Lightning)."""
    validation.check_top_level(cfg)
    validation.check_output_dir(cfg.paths.output_dir)
    validation.check_loggers(cfg.get("logger"))
    validation.check_attack(cfg.attack)
    validation.check_regularizer(cfg.regularizer, cfg.attack)
    validation.check_paired_measure(cfg.regularizer, cfg.data)


def _apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("print_config", False):
        from rich.console import Console
        from rich.syntax import Syntax

        shown = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        Console().print(Syntax(OmegaConf.to_yaml(shown), "yaml", theme="ansi_dark"))


def metric_value(metrics: Mapping[str, float], name: str | None, only_tested: bool = False) -> float | None:
    """The metric a sweeper optimizes (``cfg.optimized_metric``); ``None`` when no name is set, or when a
    resume had no epoch left to train (``only_tested``: the summary says so) and ``name`` is a fit metric.

    Raises:
        ConfigError: ``name`` was not logged; the message lists the logged metrics.
    """
    if not name or (only_tested and name not in metrics and not name.startswith("test/")):
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; choose one of {sorted(metrics)}")
    return float(metrics[name])


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="pkg://lsa_train.conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra task: trains and returns ``cfg.optimized_metric`` (for sweepers).

    In a multirun a failing job writes ``metrics.json`` with ``status: failed`` and returns NaN, so
    that the other jobs still run and the sweep summary lists it.
    """
    mark_task_started()
    multirun = _is_multirun()
    try:
        metrics, objects = train(cfg)
        return metric_value(metrics, cfg.get("optimized_metric"), only_tested=bool(objects.get("only_tested")))
    except Exception as err:
        config_error = isinstance(err, ConfigError)
        message = one_line(err) if config_error else f"{type(err).__name__}: {one_line(err)}"
        if multirun or not config_error:
            _record_failure(cfg, message)
        if not multirun:
            with config_errors_to_cli():  # one line on stderr, not Hydra's own line first
                raise
            return None
        log.error("job failed: %s", message, exc_info=not config_error)
        return math.nan


def _record_failure(cfg: DictConfig, message: str) -> None:
    try:
        run_dir = Path(str(cfg.paths.output_dir))
        if run_dir.is_dir():
            info = {"overrides": overrides.hydra_task_overrides()}
            write_metrics_json(run_dir, failure_summary(run_dir, message, info))
    except Exception:  # reporting must not hide the original error
        log.warning("could not write metrics.json for the failed run", exc_info=True)


def main(cfg: DictConfig | None = None) -> float | None:
    """Console entry point (``lsa-train``, ``python -m lsa_train``).

    Args:
        cfg: A composed config to run directly (returns the optimized metric); ``None`` reads the
            command line, runs Hydra (single run or ``-m`` multirun) and returns ``None``.
    """
    if cfg is not None:
        return hydra_main(cfg)
    run_cli(hydra_main, prog="lsa-train")
    return None


if __name__ == "__main__":
    main()
