"""Run folders as ``python -m lsa_train`` and ``lsa-evaluate`` write them, without training: the composed
config (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), ``metrics.json`` from the app's own
summary writer and, on request, an evaluation in ``eval/<date>_<time>/``. Shared by the ``lsa-compare``
tests and the README test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lsa_train.app.report import build_summary, write_metrics_json


def write_run(run_dir: Path, overrides: Sequence[str], *, clean: float, pgd: float,
              evaluation: dict[str, float] | None = None, status: str = "completed") -> Path:
    """A finished training run of ``overrides`` with test accuracies ``clean`` and ``pgd`` (fractions).

    ``evaluation`` (``clean``, ``pgd``, ``autoattack``, ``worst_case``, fractions) adds
    ``eval/2026-01-01_00-00-00/metrics.json`` as :class:`lsa_train.evaluation.report.EvaluationReport` writes it.
    """
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra, resolve=False)}),
                   hydra_dir / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    if status == "completed":
        metrics = {"test/acc_clean": clean, "test/acc_pgd": pgd}
        write_metrics_json(run_dir, build_summary(metrics=metrics, eps_grid=[], run_dir=run_dir, info={}))
    else:
        write_metrics_json(run_dir, {"status": status, "run_dir": str(run_dir), "error": "killed", "metrics": {}})
    if evaluation is not None:
        from lsa_train.evaluation.report import EvaluationReport

        report = EvaluationReport(clean_accuracy=evaluation["clean"], fgsm_sweep={0.0: evaluation["clean"]},
                                  pgd_accuracy=evaluation["pgd"], pgd_settings={"eps": 0.2, "steps": 20},
                                  autoattack_accuracy=evaluation.get("autoattack"),
                                  worst_case_accuracy=evaluation.get("worst_case"))
        report.to_json(run_dir / "eval" / "2026-01-01_00-00-00" / "metrics.json")
    return run_dir


def write_sweep(sweep_dir: Path, jobs: Sequence[tuple[Sequence[str], float, float]]) -> Path:
    """A multirun folder: job ``i`` of ``jobs`` (``(overrides, clean, pgd)``) in ``<sweep_dir>/<i>``."""
    for index, (overrides, clean, pgd) in enumerate(jobs):
        write_run(sweep_dir / str(index), overrides, clean=clean, pgd=pgd)
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")
    return sweep_dir
