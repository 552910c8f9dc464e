"""``python -m lsa_train.app.analyze`` / ``lsa-analyze``: layer sustainability analysis of a trained run
or of any model.

Rebuilds the data and network of a training run from ``<run>/.hydra/config.yaml`` and loads the weights
of ``ckpt_path``, or builds ``model=<name>`` for ``data=<name>`` (weights from ``model.checkpoint``,
pretrained torchvision/timm weights, RobustBench), and compares clean and perturbed representations at
every probe for the paper's six perturbations (gaussian, salt, pepper, speckle, fgsm, pgd) at one
budget ``eps``, on ``num_samples`` test samples. Writes into ``<train run>/analysis/<date>_<time>/``:

* ``lsa_<perturbation>.csv``: per-probe mean/std CM and MVL flag, one file per perturbation;
* ``lsa_layers.csv``: the same rows for all perturbations (column ``perturbation``);
* ``lsa_results.json``: every :class:`~lsa_train.analysis.LSAResult` (CM matrices included);
* ``lsa_layers.png``: the paper-style figure (mean CM per probe, one line per perturbation, MVL ringed);
* ``lsa_cm_distribution.png``: the per-sample CM of every probe (box plot) for the adversarial perturbation;
* ``feature_maps/<NN>_<probe>.png`` (``feature_maps=true``): clean, perturbed and |difference| feature maps
  of the MVL probes (or ``feature_map_probes``) for the first ``feature_map_samples`` samples;
* ``analysis.md``: the MVL per perturbation, one table per perturbation and the figures.

Examples:
    python -m lsa_train.app.analyze ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    lsa-analyze ckpt_path=<ckpt> eps=0.2 num_samples=1000 probes=learnable top_k=2
    lsa-analyze model=tv model.name=tv:resnet18 model.weights=DEFAULT data=imagefolder data.root=<dir> eps=0.03
    lsa-analyze ckpt_path=<ckpt> list_probes=true     # print the probes one can pick, then stop
    lsa-analyze ckpt_path=<ckpt> feature_map_samples=8 'feature_map_probes=[net.features.relu2]'
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lsa_train.app import analysis_figures
from lsa_train.app.checkpoint_loading import register_resolvers
from lsa_train.app.cli import config_errors_to_cli, mark_task_started, run_cli
from lsa_train.app.errors import ConfigError, one_line

log = logging.getLogger(__name__)

register_resolvers()

#: Files written into the output dir (besides one ``lsa_<perturbation>.csv`` per perturbation).
ANALYSIS_FILES: dict[str, str] = {
    "csv": "lsa_layers.csv",
    "json": "lsa_results.json",
    "plot": "lsa_layers.png",
    "distribution": analysis_figures.DISTRIBUTION_FILE,
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
    analysis_figures.check_feature_map_config(cfg)


def analysis_settings(cfg: DictConfig, run_cfg: DictConfig | None) -> dict[str, Any]:
    """Probes, measure and MVL rule: the app's values, else the training run's MVL settings (if any)."""
    reg = (run_cfg.get("regularizer") or {}) if run_cfg is not None else {}
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
    from lsa_train.app import overrides, validation
    from lsa_train.app.checkpoint_loading import (
        load_for_app,
        resolve_device,
        run_facts,
        threads_for_model,
        torch_runtime,
    )
    from lsa_train.evaluation import collect_samples
    from lsa_train.factory import data_class_names

    started = time.perf_counter()
    overrides.check_added_keys("analyze", overrides.hydra_task_overrides())
    check_config(cfg)
    out_dir = validation.check_output_dir(str(cfg.paths.output_dir))
    device = resolve_device(cfg.device)
    with torch_runtime(cfg.seed, cfg.torch_threads):
        run = load_for_app(cfg)
        threads_for_model(cfg.torch_threads, run.model)
        settings = analysis_settings(cfg, run.run_cfg)
        datamodule = run.datamodule
        datamodule.setup("test" if cfg.split == "test" else "validate")
        loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
        if cfg.get("list_probes"):
            return {"probes": print_probes(run.model, collect_samples(loader, 1)[0], settings["probes"])}
        if cfg.eps is not None:
            eps = float(cfg.eps)
        else:
            eps = linf_training_eps(run.run_cfg) if run.run_cfg is not None else run.training_eps(setting="eps")
            if eps == 0:  # a normal run: analysing at eps 0 finds no MVL at all
                example = run.run_cfg.attack.get("eval_eps") or 0.1
                raise ConfigError("the run was trained without an attack (attack.eps=0), so there is no training eps "
                                  f"to analyse at; set eps=<budget>, e.g. eps={example}")
        x, y, subset = stratified_samples(loader, int(cfg.num_samples), int(cfg.seed))
        if x.shape[0] < int(cfg.num_samples):
            log.info("the %s split has %d samples (< num_samples=%d): using all", cfg.split, x.shape[0],
                     cfg.num_samples)
        model = run.model.to(device)
        map_probes = analysis_figures.named_feature_map_probes(cfg, model, x[:1].to(device))
        notes = [*probe_notes(model, x[:1].to(device), settings["probes"]),
                 *overrides.inert_overrides("analyze", cfg, overrides.hydra_task_overrides()), *run.notes]
        log.info("analysing %s (weights: %s) on %d %s samples, eps=%g, probes=%s", run.model_name, run.weights,
                 x.shape[0], cfg.split, eps, settings["probes"])
        try:
            results = analyze_perturbations(
                model, x.to(device), y.to(device), perturbations=[str(p) for p in cfg.perturbations], eps=eps,
                batch_size=int(cfg.batch_size), seed=int(cfg.seed), **settings,
            )
        except (ValueError, KeyError) as err:  # unknown perturbation, probe pattern or measure
            raise ConfigError(f"analysis settings {settings} / perturbations={list(cfg.perturbations)}: "
                              f"{one_line(err)}") from err
        class_names = data_class_names(datamodule)
        feature_maps = (analysis_figures.write_feature_maps(cfg, model, x.to(device), y.to(device), results,
                                                            map_probes, out_dir, class_names)
                        if cfg.feature_maps else [])
    facts = {**run_facts(run), "eps": eps, "num_samples": int(x.shape[0]), "samples": subset,
             "split": str(cfg.split), "device": str(device), **settings}
    if class_names is not None:
        facts["classes"] = short_names(class_names)
    files = write_outputs(results, out_dir, facts, _log_scale(cfg.log_scale, results), feature_maps, notes)
    facts["wall_time_s"] = round(time.perf_counter() - started, 2)
    print_mvl(results, out_dir, notes)
    log.info("analysis written to %s (%.1f s)", out_dir, facts["wall_time_s"])
    return {"results": results, "eps": eps, "settings": facts, "files": files}


def stratified_samples(loader: Any, n: int, seed: int) -> tuple[Any, Any, str]:
    """``x``, ``y`` of a seeded stratified subset of ``n`` samples of ``loader`` (all if it has fewer), and
    ``"N of M samples, stratified, seed S"`` for the report (:mod:`lsa_train.utils.subsets`)."""
    from lsa_train.evaluation import collect_samples
    from lsa_train.utils.subsets import batch_labels, select_stratified

    selection = select_stratified(loader, batch_labels(loader), n, seed)
    x, y = collect_samples(selection.batches)
    return x, y, selection.description


def probe_notes(model: Any, example: Any, probes: Any) -> list[str]:
    """What the probes of ``probes`` miss (see :func:`~lsa_train.analysis.probes.select_probes_and_notes`),
    logged, for ``analysis.md``; a bad spec gives none here (the analysis itself reports it)."""
    from lsa_train.analysis.probes import select_probes_and_notes

    spec = OmegaConf.to_container(probes) if OmegaConf.is_config(probes) else probes
    try:
        notes = select_probes_and_notes(model, example, spec)[1]
    except ValueError:
        return []
    for note in notes:
        log.warning("%s", note)
    return notes


def short_names(names: Sequence[str], limit: int = 10) -> str:
    """``"cat, dog, eel"``, or the first ``limit`` names and how many there are."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} classes)" if len(names) > limit else "")


def print_probes(model: Any, example: Any, probes: Any) -> list[str]:
    """Prints (and returns) the probes of ``model`` that ``probes`` selects, with their output shapes."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from lsa_train.analysis import ProbeCapture, select_probes

    try:
        found = select_probes(model, example, probes)
    except ValueError as err:
        raise ConfigError(f"probes={probes}: {one_line(err)}") from err
    with torch.no_grad(), ProbeCapture(model, found) as capture:
        features = capture.forward_until_captured(example)
    table = Table(title=f"probes={probes}: {len(found)} probes in forward order (pick by index or name)",
                  header_style="bold")
    for column in ("index", "probe", "output shape"):
        table.add_column(column)
    for probe in found:
        table.add_row(str(probe.index), probe.name, str(tuple(features[probe.name].shape[1:])))
    Console().print(table)
    return [probe.name for probe in found]


def linf_training_eps(run_cfg: DictConfig) -> float:
    """The default budget: the run's ``attack.eps``. The fgsm and pgd perturbations are Linf, so a run
    trained in another norm (``attack=pgd_l2``) is analysed at its Linf ``attack.eval_eps`` instead."""
    attack = run_cfg.attack
    norm = str(attack.get("norm") or "linf")
    if norm == "linf":
        return float(attack.eps)
    eps = float(attack.eval_eps)
    log.warning("the run trained with an %s budget (attack.eps=%g); the fgsm/pgd perturbations are Linf, so the "
                "analysis uses the run's Linf budget attack.eval_eps=%g (set eps= to choose)", norm, attack.eps, eps)
    return eps


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


def analysis_markdown(
    results: Mapping[str, Any], facts: Mapping[str, Any], figure: str, extra: Sequence[str] = ()
) -> str:
    """``analysis.md``: the setting, the MVL per perturbation, the figure, ``extra`` lines, one table per
    perturbation."""
    lines = ["# Layer sustainability analysis", ""]
    lines += [", ".join(f"**{k}**: `{v}`" for k, v in facts.items()), ""]
    lines += ["## MVL per perturbation", "", "| perturbation | eps | MVL | mu | sigma |", "|---|---:|---|---:|---:|"]
    for name, result in results.items():
        mvl = ", ".join(f"`{n}`" for n in result.mvl_names) or "(none)"
        lines.append(f"| {name} | {result.metadata.get('eps', '')} | {mvl} | {result.mu:.4g} | {result.sigma:.4g} |")
    lines += ["", f"![LSA curves]({figure})", "", *extra]
    for name, result in results.items():
        lines += [f"## {name}", "", result.to_markdown(), ""]
    return "\n".join(lines)


def write_outputs(
    results: Mapping[str, Any],
    out_dir: Path,
    facts: Mapping[str, Any],
    log_scale: bool,
    feature_maps: Sequence[Path] = (),
    notes: Sequence[str] = (),
) -> dict:
    """Writes the per-perturbation CSVs, the combined CSV, JSON, figures and Markdown (which links the
    ``feature_maps`` already written); returns the paths."""
    from lsa_train.analysis import plot_layer_curves
    from lsa_train.utils.io import atomic_write_text

    files: dict[str, Any] = {}
    for name, result in results.items():
        files[f"csv_{name}"] = out_dir / f"lsa_{name}.csv"
        result.to_csv(files[f"csv_{name}"])
    files["csv"] = atomic_write_text(out_dir / ANALYSIS_FILES["csv"], combined_csv(results))
    payload = {"settings": dict(facts), "notes": list(notes),
               "results": {name: r.to_dict() for name, r in results.items()}}
    files["json"] = atomic_write_text(out_dir / ANALYSIS_FILES["json"], json.dumps(payload, indent=1, default=str))
    title = f"LSA of {facts.get('model')} (eps={facts.get('eps')}, {facts.get('num_samples')} samples)"
    files["plot"] = plot_layer_curves(dict(results), out_dir / ANALYSIS_FILES["plot"], title=title,
                                      log_scale=log_scale)
    files["distribution"] = analysis_figures.write_distribution(results, out_dir, log_scale=False)
    files["feature_maps"] = list(feature_maps)
    extra = analysis_figures.figures_markdown(out_dir, files["distribution"], files["feature_maps"])
    if notes:
        extra += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    files["markdown"] = atomic_write_text(out_dir / ANALYSIS_FILES["markdown"],
                                          analysis_markdown(results, facts, ANALYSIS_FILES["plot"], extra) + "\n")
    return files


def print_mvl(results: Mapping[str, Any], out_dir: Path, notes: Sequence[str] = ()) -> None:
    """Prints the MVL of each perturbation as a rich table, then the ``notes`` (one per line)."""
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
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"written to {out_dir}")


@hydra.main(version_base="1.3", config_path="pkg://lsa_train.conf", config_name="analyze")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task: runs :func:`analyze_run`."""
    mark_task_started()
    with config_errors_to_cli():
        analyze_run(cfg)


def main() -> None:
    """Console entry point (``lsa-analyze``, ``python -m lsa_train.app.analyze``): one-line errors,
    exit code 2 for bad input (see :mod:`lsa_train.app.cli`)."""
    run_cli(hydra_main, prog="lsa-analyze")


if __name__ == "__main__":
    main()
