"""The training run behind :func:`lsa_train.app.train.train`: build, check, fit, test, report.

Imported on first use, so that ``--help`` and configuration mistakes are answered without loading
torch and Lightning.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lsa_train.app import builders, overrides, validation
from lsa_train.app.checkpoint_record import RunRecordCallback, check_hyper_parameters, run_record
from lsa_train.app.errors import ConfigError
from lsa_train.app.report import build_summary, print_summary, write_metrics_json, write_report_md
from lsa_train.app.resume import ResumePlan
from lsa_train.app.resume import describe as describe_resume
from lsa_train.app.schemas import MVLMode
from lsa_train.factory import data_class_names
from lsa_train.training.guards import CheckpointStateGuard, GuardedCheckpointIO
from lsa_train.training.wall_time import WallTimeCallback
from lsa_train.trust import CHECKPOINT_DIR, TrustPolicy
from lsa_train.utils.runtime import torch_threads
from lsa_train.writes import WriteOutsideError, check_trainer_writes, remote_logger_notes

log = logging.getLogger(__name__)

#: Lightning warnings that are expected with the small, in-memory default data.
_EXPECTED_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def run_training(
    cfg: DictConfig,
    started: float,
    ckpt_path: str | None = None,
    policy: TrustPolicy | None = None,
    resume: ResumePlan | None = None,
    notes: list[str] | None = None,
    bare_checkpoint: Mapping[str, Any] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Seeds, sets determinism and threads, then builds (checking each object), fits, tests and reports.

    Args:
        cfg: The composed config, its plain values already checked by :func:`lsa_train.app.train.train`.
        started: ``time.perf_counter()`` at the start of the run.
        ckpt_path: The checked checkpoint to resume from, if any.
        policy: The command line's trust (``trust_checkpoint``); default: none.
        resume: The resume of a run folder (``cfg`` is then its effective config), recorded before fitting.
        notes: Lines for the run summary (what the run did differently from what a reader would assume).
        bare_checkpoint: The content of ``ckpt_path`` when it is not in a run folder: its ``hyper_parameters``
            must agree with the module built here (:func:`~lsa_train.app.checkpoint_record.check_hyper_parameters`).
    """
    _route_lightning_logs_to_root()
    if (cfg.get("extras") or {}).get("ignore_warnings", True):
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
    L.seed_everything(cfg.seed, workers=True)
    policy = policy or TrustPolicy()
    objects = _build(cfg, policy, resuming=ckpt_path is not None, started=started)
    if bare_checkpoint is not None and ckpt_path is not None:  # before anything is trained
        check_hyper_parameters(bare_checkpoint, Path(ckpt_path), objects["module"].hparams)
    threads = resolve_torch_threads(cfg.get("torch_threads"), objects["model"])
    with torch_threads(threads):
        return _fit_test_report(cfg, objects, started, ckpt_path, policy, resume, notes or [])


#: ``torch_threads=auto``: models below this many parameters run on one CPU thread.
SMALL_MODEL_PARAMETERS = 2_000_000


def resolve_torch_threads(setting: Any, model: torch.nn.Module) -> int | None:
    """``torch_threads`` for this model (``auto``: 1 below :data:`SMALL_MODEL_PARAMETERS` parameters,
    else torch's default), said in the run's first lines."""
    if str(setting).lower() != "auto":
        threads = None if setting is None else int(setting)
        log.info("torch threads: %s (torch_threads=%s)", threads or torch.get_num_threads(), setting)
        return threads
    size = sum(p.numel() for p in model.parameters())
    threads = 1 if size < SMALL_MODEL_PARAMETERS else None
    log.info("torch threads: %d (torch_threads=auto: the model has %.2gM parameters; set torch_threads=<n> to "
             "choose)", threads or torch.get_num_threads(), size / 1e6)
    return threads


def _fit_test_report(
    cfg: DictConfig, objects: dict[str, Any], started: float, ckpt_path: str | None, policy: TrustPolicy,
    resume: ResumePlan | None, notes: list[str],
) -> tuple[dict[str, float], dict[str, Any]]:
    module, trainer, datamodule = objects["module"], objects["trainer"], objects["datamodule"]

    log.info("training %s on %s (%s, base loss %s)", builders.model_display_name(cfg.model), type(datamodule).__name__,
             module.attack, module.base_loss_name)
    resumed = describe_resume(resume, Path(ckpt_path) if ckpt_path else None)
    if resumed:
        log.info(resumed)
    if resume is not None and trainer.is_global_zero:
        log.info("resume recorded in %s", resume.record())
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not policy.unpickle)
    metrics = _floats(trainer.callback_metrics)
    mvl_callback = objects["mvl_callback"]
    # trainer.test(ckpt_path=...) restores the module's and the callbacks' state of that checkpoint: keep the
    # whole run's MVL history, LSA-term counts and checkpoint paths
    history = list(mvl_callback.history) if mvl_callback is not None else []
    lsa_term = module.lsa_term_usage()
    best_callback, last = checkpoint_files(trainer)
    best = (best_callback.best_model_path or None) if best_callback is not None else None
    if best_callback is not None and best_callback.best_model_score is not None:
        metrics[f"{best_callback.monitor}_best"] = float(best_callback.best_model_score)

    averaging, averaging_notes = weight_averaging(trainer)
    # the test takes last.ckpt, the weights the README's `lsa-evaluate ckpt_path=<run>/checkpoints/last.ckpt`
    # evaluates; without one (no last_checkpoint callback) the weights in memory, those of the last epoch
    tested = last
    weights = (tested_weights(Path(tested)) if tested else
               f"current weights (after {trainer.current_epoch} epochs, step {trainer.global_step}; not in a "
               "checkpoint: the callbacks have no last_checkpoint)")
    if averaging:
        weights = f"{weights}; {averaging}"
    trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False, weights_only=True)
    metrics.update(_floats(trainer.callback_metrics))
    final_mvl = list(module.mvl)  # the MVL of the tested weights (restored with them from their checkpoint)

    info = {
        "setting": _setting(cfg, module.base_loss_name),
        "eval_eps": float(cfg.attack.eval_eps),
        "test_pgd_steps": getattr(module.test_attack, "steps", None),
        "mvl": final_mvl,
        "mvl_history": history,
        "lsa_term": lsa_term,
        "mvl_history_files": (
            {k: str(v) for k, v in mvl_callback.history_files(trainer).items()} if mvl_callback is not None else {}
        ),
        "best_checkpoint": best,
        "last_checkpoint": last,
        "tested_checkpoint": tested,
        "weights": weights,
        "resumed_from": ckpt_path,
        "resume": resume.summary() if resume is not None else None,
        "resume_note": resumed,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        **_wall_time_facts(objects["wall_time"], resumed=ckpt_path is not None),
        "model_kwargs": objects["model_kwargs"],
        "class_names": data_class_names(datamodule),
        "notes": [*notes, *objects["notes"], *averaging_notes, *_guard_notes(objects),
                  *_wall_time_notes(objects, ckpt_path),
                  *([module.input_range_warning] if module.input_range_warning else [])],
        "overrides": overrides.hydra_task_overrides(),
        "optimized_metric": cfg.get("optimized_metric"),
    }
    run_dir = str(cfg.paths.output_dir)
    summary = build_summary(metrics=metrics, eps_grid=module.test_eps_grid, run_dir=run_dir, info=info)
    if trainer.is_global_zero:
        write_metrics_json(run_dir, summary)
        write_report_md(run_dir, summary)
        print_summary(summary)
    return metrics, {**objects, "summary": summary}


def tested_weights(path: Path) -> str:
    """:func:`~lsa_train.app.checkpoint_loading.weights_label` of the run's own checkpoint ``path`` (read with
    ``weights_only=True``, memory-mapped: only its small records are touched)."""
    from lsa_train.app.checkpoint_loading import weights_label

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return weights_label(checkpoint, path)


def checkpoint_files(trainer: L.Trainer) -> tuple[ModelCheckpoint | None, str | None]:
    """The trainer's best-epoch checkpoint callback (the first ``ModelCheckpoint`` with a monitor) and the
    path of its last-epoch checkpoint.

    The last-epoch file is the one a ``ModelCheckpoint`` without a monitor rewrites every epoch (``last.ckpt``
    in ``conf/callbacks/last_checkpoint.yaml``), else a ``save_last`` file (``last_model_path``), which a
    monitored ``ModelCheckpoint`` only rewrites in epochs that improve its monitor; ``None`` when no
    checkpoint was written.
    """
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    best = next((cb for cb in callbacks if cb.monitor is not None), None)
    every_epoch = [cb.best_model_path for cb in callbacks if cb.monitor is None and cb.best_model_path]
    saved_last = [cb.last_model_path for cb in callbacks if cb.last_model_path]
    last = (every_epoch or saved_last or [None])[0]
    return best, last


def weight_averaging(trainer: L.Trainer) -> tuple[str | None, list[str]]:
    """What the validated, checkpointed and tested weights are when a ``WeightAveraging`` callback runs
    (``EMA (decay 0.999; ...)``; ``None``: the live weights), and summary lines about it (an EMA longer than the
    run). Called after ``fit``, before ``test`` (which restores the tested checkpoint's callback state)."""
    from lightning.pytorch.callbacks import WeightAveraging

    from lsa_train.training.ema import EMAWeightAveraging

    averaging = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
    if not averaging:
        return None, []
    callback = averaging[0]
    if isinstance(callback, EMAWeightAveraging):
        module = trainer.lightning_module
        notes = [callback.horizon_note(callback.updates), callback.inert_note(module)]
        return callback.describe(module), [note for note in notes if note]
    return f"averaged by {type(callback).__name__}", [
        f"{type(callback).__name__} is not lsa_train's EMAWeightAveraging: Lightning's WeightAveraging tests the "
        "live weights of the tested checkpoint, not its averaged ones; use callbacks=ema"]


def _build(
    cfg: DictConfig, policy: TrustPolicy, resuming: bool = False, started: float | None = None
) -> dict[str, Any]:
    """Builds every object, checking each as it is built; nothing is written to the run dir before the
    trainer starts. Every place the trainer writes is checked (:func:`lsa_train.writes.check_trainer_writes`),
    checkpoint files are written and deleted through :class:`~lsa_train.training.guards.GuardedCheckpointIO`,
    and a resume takes from the checkpoint's callback state only paths inside the run's checkpoints folder
    (:class:`~lsa_train.training.guards.CheckpointStateGuard`)."""
    datamodule = builders.build_datamodule(cfg)
    validation.check_dataset_available(datamodule)
    model, model_kwargs = builders.build_model(cfg, datamodule, trust=policy.unpickle)
    validation.check_model_input(model, builders.model_display_name(cfg.model), datamodule.input_shape,
                                 datamodule.num_classes)
    mvl = cfg.regularizer.mvl
    mode = MVLMode(mvl.mode)
    notes: list[str] = []
    if mode is not MVLMode.none:
        layers = mvl.layers if mode is MVLMode.fixed else None
        eta_rule = mode in (MVLMode.auto, MVLMode.once) and mvl.top_k is None
        notes = validation.check_mvl_layers(model, datamodule.input_shape, mvl.probes, layers,
                                            min_layers=int(mvl.min_layers) if eta_rule else 0)
    for note in notes:
        log.warning("%s", note)
    attack, base_loss = builders.build_attack(cfg)
    parts = builders.build_regularizer(cfg)
    if parts.analysis_note:
        notes.append(parts.analysis_note)
    module = builders.build_module(cfg, model, attack, base_loss, parts, datamodule.num_classes)

    loggers = builders.build_loggers(cfg)
    callbacks = builders.build_callbacks(cfg, has_logger=bool(loggers))
    if parts.callback is not None:
        callbacks.append(parts.callback)
    run_dir = Path(str(cfg.paths.output_dir))
    guards = [CheckpointStateGuard(run_dir / CHECKPOINT_DIR)] if resuming else []
    checkpoint_io = GuardedCheckpointIO(run_dir)
    wall_time = WallTimeCallback(time.perf_counter() if started is None else started)  # kept across resumes
    record = RunRecordCallback(run_record(cfg))  # what the checkpoints trained, for their use without the run folder
    trainer = builders.build_trainer(cfg, callbacks + guards + [wall_time, record], loggers,
                                     checkpoint_io=checkpoint_io)
    if trainer.strategy.checkpoint_io is not checkpoint_io:
        notes.append("trainer.plugins names its own checkpoint writer: checkpoint paths were checked when the "
                     "trainer was built, not at each write")
    try:
        check_trainer_writes(trainer, run_dir)
    except WriteOutsideError as err:
        raise ConfigError(str(err)) from err
    notes += remote_logger_notes(trainer.loggers)
    _log_config(cfg, trainer)
    return {
        "cfg": cfg, "datamodule": datamodule, "model": model, "model_kwargs": model_kwargs, "module": module,
        "mvl_callback": parts.callback, "callbacks": callbacks, "loggers": loggers, "trainer": trainer,
        "notes": notes, "guards": guards, "checkpoint_io": checkpoint_io, "wall_time": wall_time,
    }


# -- helpers --------------------------------------------------------------------------------------
def _wall_time_facts(wall_time: WallTimeCallback, resumed: bool) -> dict[str, float]:
    """``wall_time_s``: the whole run's seconds (a resumed run adds the time up to the checkpoint it resumed
    from, recorded in that checkpoint), and for a resume the parts."""
    facts = {"wall_time_s": round(wall_time.total_s(), 2)}
    if resumed:
        facts["wall_time_before_resume_s"] = round(wall_time.before_s, 2)
        facts["wall_time_this_part_s"] = round(wall_time.elapsed_s(), 2)
    return facts


def _wall_time_notes(objects: Mapping[str, Any], ckpt_path: str | None) -> list[str]:
    note = objects["wall_time"].resume_note() if ckpt_path is not None else None
    return [note] if note else []


def _guard_notes(objects: Mapping[str, Any]) -> list[str]:
    """What the checkpoint guards dropped from a resumed checkpoint or refused to delete."""
    lines = [line for guard in objects.get("guards", []) for line in guard.dropped]
    return lines + list(getattr(objects.get("checkpoint_io"), "refused", []))


def _route_lightning_logs_to_root() -> None:
    """Lightning's top-level package gives the ``lightning`` logger a console handler of its own; once
    the root logger is configured (Hydra's job logging), every Lightning message would print twice."""
    if not logging.getLogger().handlers:
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_logger.removeHandler(handler)


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _setting(cfg: DictConfig, base_loss: str) -> dict[str, Any]:
    lam = cfg.regularizer.get("lambda")
    setting = {
        "data": overrides.hydra_choice("data") or cfg.data.get("_target_"),
        "model": builders.model_display_name(cfg.model),
        "attack": overrides.hydra_choice("attack") or cfg.attack.get("_target_"),
        "eps": float(cfg.attack.eps),
        "base_loss": base_loss,
        "lambda": OmegaConf.to_container(lam) if OmegaConf.is_config(lam) else lam,
        "mvl_mode": MVLMode(cfg.regularizer.mvl.mode).value,
        "seed": int(cfg.seed),
        "tags": [str(t) for t in cfg.get("tags") or []],
    }
    clip = cfg.attack.get("clip")
    clip = getattr(clip, "value", clip)
    if clip is not None and clip != "project":  # the weakened training attack of the ablation shows in the report
        setting["attack_clip"] = str(clip)
    return setting


def _log_config(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Sends the composed config (without ``hydra``) to every logger as hyperparameters."""
    if not trainer.loggers:
        return
    shown = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        params = OmegaConf.to_container(shown, resolve=True, enum_to_str=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves inside a Hydra run
        params = OmegaConf.to_container(shown, resolve=False, enum_to_str=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


