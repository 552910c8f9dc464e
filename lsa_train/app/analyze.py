"""``python -m lsa_train.app.analyze`` / ``lsa-analyze``: layer sustainability analysis of a trained run.

Rebuilds the data and network of a training run from ``<run>/.hydra/config.yaml``, loads the weights
of ``ckpt_path`` and compares clean and perturbed representations at every probe for the paper's six
perturbations (gaussian, salt, pepper, speckle, fgsm, pgd) at one budget ``eps``, on ``num_samples``
test samples. Writes into ``<train run>/analysis/<date>_<time>/``:

* ``lsa_<perturbation>.csv``: per-probe mean/std CM and MVL flag, one file per perturbation;
* ``lsa_layers.csv``: the same rows for all perturbations (column ``perturbation``);
* ``lsa_results.json``: every :class:`~lsa_train.analysis.LSAResult` (CM matrices included);
* ``lsa_layers.png``: the paper-style figure (mean CM per probe, one line per perturbation, MVL ringed);
* ``analysis.md``: the MVL per perturbation and one table per perturbation.

Examples:
    python -m lsa_train.app.analyze ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    lsa-analyze ckpt_path=<ckpt> eps=0.2 num_samples=1000 probes=learnable top_k=2
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lsa_train.app.checkpoint_loading import register_resolvers
from lsa_train.app.cli import mark_task_started, run_cli
from lsa_train.app.errors import ConfigError, one_line

log = logging.getLogger(__name__)

register_resolvers()

#: Files written into the output dir (besides one ``lsa_<perturbation>.csv`` per perturbation).
ANALYSIS_FILES: dict[str, str] = {
    "csv": "lsa_layers.csv",
    "json": "lsa_results.json",
    "plot": "lsa_layers.png",
    "markdown": "analysis.md",
}
#: Ratio of the largest to the smallest curve maximum above which ``log_scale=auto`` uses a log axis.
_LOG_RATIO = 50.0


def check_config(cfg: DictConfig) -> None:
    """Plain-value checks, answered before anything is loaded.

    Raises:
        ConfigError: A bad value, named with the valid choices.
    """
    from lsa_train.analysis.probes import PROBE_SETS

    if str(cfg.split) not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} is invalid; choose test or val")
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"num_samples={cfg.num_samples} must be an integer >= 1")
    if not list(cfg.perturbations or []):
        raise ConfigError("perturbations=[] is empty; e.g. perturbations=[gaussian,salt,pepper,speckle,fgsm,pgd]")
    if cfg.eps is not None and float(cfg.eps) < 0:
        raise ConfigError(f"eps={cfg.eps} must be >= 0 (or null for the run's training eps)")
    if cfg.probes is not None and isinstance(cfg.probes, str) and cfg.probes not in PROBE_SETS:
        raise ConfigError(f"probes={cfg.probes} is invalid; choose one of {list(PROBE_SETS)} (or a list of patterns)")
    if cfg.top_k is not None and int(cfg.top_k) < 1:
        raise ConfigError(f"top_k={cfg.top_k} must be an integer >= 1 (or null to use eta)")
    if cfg.eta is not None and float(cfg.eta) < 0:
        raise ConfigError(f"eta={cfg.eta} must be a number >= 0")
    if str(cfg.log_scale).lower() not in ("true", "false", "auto"):
        raise ConfigError(f"log_scale={cfg.log_scale} is invalid; choose true, false or auto")


def analysis_settings(cfg: DictConfig, run_cfg: DictConfig) -> dict[str, Any]:
    """Probes, measure and MVL rule: the app's values, else the training run's MVL settings."""
    reg = run_cfg.get("regularizer") or {}
    mvl = reg.get("mvl") or {} if isinstance(reg, DictConfig) else {}
    probes = cfg.probes if cfg.probes is not None else mvl.get("probes", "activations")
    if OmegaConf.is_config(probes):
        probes = OmegaConf.to_container(probes)
    measure = cfg.measure if cfg.measure is not None else reg.get("measure", "relative_error")
    if cfg.top_k is not None or cfg.eta is not None:
        top_k, eta = cfg.top_k, cfg.eta
    else:
        top_k, eta = mvl.get("top_k"), mvl.get("eta", 1.0)
    top_k = None if top_k is None else int(top_k)
    return {"probes": probes, "measure": str(measure), "eta": None if top_k is not None else float(eta or 1.0),
            "top_k": top_k}


def analyze_run(cfg: DictConfig) -> dict[str, Any]:
    """Analyses the checkpoint of ``cfg.ckpt_path`` and writes the files into ``cfg.paths.output_dir``.

    Args:
        cfg: A config composed from ``lsa_train.conf`` (``analyze.yaml``).

    Returns:
        ``{perturbation: LSAResult}`` under ``"results"``, plus ``"eps"``, ``"settings"``, ``"files"``.

    Raises:
        ConfigError: Bad input (checkpoint, run config, values), reported in one line by :func:`main`.
    """
    from lsa_train.analysis import analyze_perturbations
    from lsa_train.app import validation
    from lsa_train.app.checkpoint_loading import data_overrides, load_run, resolve_device, run_facts, torch_runtime
    from lsa_train.evaluation import collect_samples

    started = time.perf_counter()
    check_config(cfg)
    out_dir = validation.check_output_dir(str(cfg.paths.output_dir))
    device = resolve_device(cfg.device)
    with torch_runtime(int(cfg.seed), cfg.torch_threads):
        run = load_run(cfg.ckpt_path, cfg.get("run_config"), data_overrides(cfg.get("data")))
        settings = analysis_settings(cfg, run.run_cfg)
        eps = float(cfg.eps) if cfg.eps is not None else float(run.run_cfg.attack.eps)
        if eps == 0 and cfg.eps is None:  # a normal run: analysing at eps 0 finds no MVL at all
            raise ConfigError(f"the run was trained without an attack (attack.eps=0), so there is no training eps to "
                              f"analyse at; set eps=<budget>, e.g. eps={run.run_cfg.attack.get('eval_eps') or 0.1}")
        datamodule = run.datamodule
        datamodule.setup("test" if cfg.split == "test" else "validate")
        loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
        x, y = collect_samples(loader, int(cfg.num_samples))
        if x.shape[0] < int(cfg.num_samples):
            log.info("the %s split has %d samples (< num_samples=%d): using all", cfg.split, x.shape[0],
                     cfg.num_samples)
        model = run.model.to(device)
        log.info("analysing %s (%s) on %d %s samples, eps=%g, probes=%s", run.model_name, run.ckpt_path,
                 x.shape[0], cfg.split, eps, settings["probes"])
        try:
            results = analyze_perturbations(
                model, x.to(device), y.to(device), perturbations=[str(p) for p in cfg.perturbations], eps=eps,
                batch_size=int(cfg.batch_size), seed=int(cfg.seed), **settings,
            )
        except (ValueError, KeyError) as err:  # unknown perturbation, probe pattern or measure
            raise ConfigError(f"analysis settings {settings} / perturbations={list(cfg.perturbations)}: "
                              f"{one_line(err)}") from err
    facts = {**run_facts(run), "eps": eps, "num_samples": int(x.shape[0]), "split": str(cfg.split),
             "device": str(device), **settings}
    files = write_outputs(results, out_dir, facts, _log_scale(cfg.log_scale, results))
    facts["wall_time_s"] = round(time.perf_counter() - started, 2)
    print_mvl(results, out_dir)
    log.info("analysis written to %s (%.1f s)", out_dir, facts["wall_time_s"])
    return {"results": results, "eps": eps, "settings": facts, "files": files}


def _log_scale(option: Any, results: Mapping[str, Any]) -> bool:
    text = str(option).lower()
    if text != "auto":
        return text == "true"
    peaks = [float(r.probe_means.max()) for r in results.values()]
    positive = [p for p in peaks if p > 0]
    return len(positive) == len(peaks) and max(positive) / min(positive) > _LOG_RATIO


def combined_csv(results: Mapping[str, Any]) -> str:
    """All per-probe rows of all perturbations, with ``perturbation`` and ``eps`` columns."""
    buffer = io.StringIO()
    fields = ["perturbation", "eps", "index", "probe", "mean", "std", "mvl"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for name, result in results.items():
        for row in result.rows():
            writer.writerow({"perturbation": name, "eps": result.metadata.get("eps"), **row})
    return buffer.getvalue()


def analysis_markdown(results: Mapping[str, Any], facts: Mapping[str, Any], figure: str) -> str:
    """``analysis.md``: the setting, the MVL per perturbation, one table per perturbation."""
    lines = ["# Layer sustainability analysis", ""]
    lines += [", ".join(f"**{k}**: `{v}`" for k, v in facts.items()), ""]
    lines += ["## MVL per perturbation", "", "| perturbation | eps | MVL | mu | sigma |", "|---|---:|---|---:|---:|"]
    for name, result in results.items():
        mvl = ", ".join(f"`{n}`" for n in result.mvl_names) or "(none)"
        lines.append(f"| {name} | {result.metadata.get('eps', '')} | {mvl} | {result.mu:.4g} | {result.sigma:.4g} |")
    lines += ["", f"![LSA curves]({figure})", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", result.to_markdown(), ""]
    return "\n".join(lines)


def write_outputs(results: Mapping[str, Any], out_dir: Path, facts: Mapping[str, Any], log_scale: bool) -> dict:
    """Writes the per-perturbation CSVs, the combined CSV, JSON, figure and Markdown; returns the paths."""
    from lsa_train.analysis import plot_layer_curves
    from lsa_train.utils.io import atomic_write_text

    files: dict[str, Path] = {}
    for name, result in results.items():
        files[f"csv_{name}"] = out_dir / f"lsa_{name}.csv"
        result.to_csv(files[f"csv_{name}"])
    files["csv"] = atomic_write_text(out_dir / ANALYSIS_FILES["csv"], combined_csv(results))
    payload = {"settings": dict(facts), "results": {name: r.to_dict() for name, r in results.items()}}
    files["json"] = atomic_write_text(out_dir / ANALYSIS_FILES["json"], json.dumps(payload, indent=1, default=str))
    title = f"LSA of {facts.get('model')} (eps={facts.get('eps')}, {facts.get('num_samples')} samples)"
    files["plot"] = plot_layer_curves(dict(results), out_dir / ANALYSIS_FILES["plot"], title=title,
                                      log_scale=log_scale)
    files["markdown"] = atomic_write_text(out_dir / ANALYSIS_FILES["markdown"],
                                          analysis_markdown(results, facts, ANALYSIS_FILES["plot"]) + "\n")
    return files


def print_mvl(results: Mapping[str, Any], out_dir: Path) -> None:
    """Prints the MVL of each perturbation as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="LSA: most vulnerable layers (MVL) per perturbation", header_style="bold")
    for column in ("perturbation", "eps", "MVL", "max mean CM"):
        table.add_column(column)
    for name, result in results.items():
        table.add_row(name, f"{result.metadata.get('eps', '')}", ", ".join(result.mvl_names) or "(none)",
                      f"{float(result.probe_means.max()):.4g}")
    console = Console()
    console.print(table)
    console.print(f"written to {out_dir}")


@hydra.main(version_base="1.3", config_path="pkg://lsa_train.conf", config_name="analyze")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task: runs :func:`analyze_run`."""
    mark_task_started()
    analyze_run(cfg)


def main() -> None:
    """Console entry point (``lsa-analyze``, ``python -m lsa_train.app.analyze``): one-line errors,
    exit code 2 for bad input (see :mod:`lsa_train.app.cli`)."""
    run_cli(hydra_main, prog="lsa-analyze")


if __name__ == "__main__":
    main()
