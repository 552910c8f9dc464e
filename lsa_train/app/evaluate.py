"""``python -m lsa_train.app.evaluate`` / ``lsa-evaluate``: robustness evaluation of a trained run or any model.

Rebuilds the data and network of a training run from ``<run>/.hydra/config.yaml`` and loads the weights
of ``ckpt_path``, or builds ``model=<name>`` for ``data=<name>`` (weights from ``model.checkpoint``), and
evaluates on the test split, streaming over batches: clean accuracy, the FGSM
sweep with the paper's R&G score, PGD-k, AutoAttack (on ``autoattack.n_samples`` samples; by default the
whole split up to 2,000 points), with ``adaptive=true`` the attacks that know the defense
(:mod:`lsa_train.app.adaptive_setup`), with ``transfer_from=<run>`` a transfer attack, the worst case per
sample over every attack run (the headline robust accuracy) and the gradient-masking checks (their
warnings head the report). Writes ``report.md``, ``metrics.json``,
``metrics.csv`` and ``accuracy_vs_eps.png`` into the run dir of this evaluation, by default
``<train run>/eval/<date>_<time>/`` (``logs/evaluate/runs/<date>_<time>/`` when the checkpoint is
not in a ``checkpoints/`` folder).

Examples:
    python -m lsa_train.app.evaluate ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    lsa-evaluate ckpt_path=<ckpt> pgd.steps=50 pgd.restarts=5 autoattack.n_samples=1000
    lsa-evaluate ckpt_path=<ckpt> autoattack.enabled=false data.eval_batch_size=512 device=cuda
    lsa-evaluate ckpt_path=<LR run ckpt> adaptive=true transfer_from=<base run ckpt>
    lsa-evaluate model=custom model._target_=my_nets.SmallCNN model.checkpoint=cnn.pt data=imagefolder \
        data.root=<dir> pgd.eps=0.03
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lsa_train.app import adaptive_setup
from lsa_train.app.checkpoint_loading import register_resolvers
from lsa_train.app.cli import config_errors_to_cli, mark_task_started, run_cli
from lsa_train.app.errors import ConfigError

log = logging.getLogger(__name__)

register_resolvers()

#: ``autoattack.version`` values (see :data:`lsa_train.evaluation.AUTOATTACK_VERSIONS`).
_AA_VERSIONS = ("standard", "plus", "rand", "custom")


def check_config(cfg: DictConfig) -> None:
    """Plain-value checks, answered before anything is loaded.

    Raises:
        ConfigError: A bad value, named with the valid choices.
    """
    if str(cfg.split) not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} is invalid; choose test or val")
    from lsa_train.app.validation import check_eps_grid

    check_eps_grid("fgsm.eps_grid", cfg.fgsm.eps_grid, "multiples 0..5 of the run's training eps")
    if cfg.pgd.eps is not None and float(cfg.pgd.eps) < 0:
        raise ConfigError(f"pgd.eps={cfg.pgd.eps} must be >= 0 (or null for the run's training eps)")
    for key in ("steps", "restarts"):
        if int(cfg.pgd[key]) < 1:
            raise ConfigError(f"pgd.{key}={cfg.pgd[key]} must be an integer >= 1")
    if cfg.pgd.alpha is not None and float(cfg.pgd.alpha) <= 0:
        raise ConfigError(f"pgd.alpha={cfg.pgd.alpha} must be > 0 (or null for max(eps / 4, 2.5 * eps / steps))")
    if cfg.max_samples is not None and int(cfg.max_samples) < 1:
        raise ConfigError(f"max_samples={cfg.max_samples} must be an integer >= 1 (or null for all)")
    aa = cfg.autoattack
    if aa.enabled:
        if str(aa.version) not in _AA_VERSIONS:
            raise ConfigError(f"autoattack.version={aa.version} is invalid; choose one of {list(_AA_VERSIONS)}")
        n = aa.n_samples
        if n is not None and n != "auto" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"autoattack.n_samples={n} must be an integer >= 1, auto (all samples up to 2000, "
                              "else 200) or null (all)")
    adaptive_setup.check_config(cfg)


def evaluate(cfg: DictConfig) -> Any:
    """Evaluates the checkpoint of ``cfg.ckpt_path`` and writes the report into ``cfg.paths.output_dir``.

    Args:
        cfg: A config composed from ``lsa_train.conf`` (``evaluate.yaml``).

    Returns:
        The :class:`~lsa_train.evaluation.EvaluationReport` (also written to disk).

    Raises:
        ConfigError: Bad input (checkpoint, run config, values), reported in one line by :func:`main`.
    """
    from lsa_train.app import overrides, validation
    from lsa_train.app.checkpoint_loading import load_for_app, resolve_device, torch_runtime

    started = time.perf_counter()
    overrides.check_added_keys("evaluate", overrides.hydra_task_overrides())
    check_config(cfg)
    out_dir = validation.check_output_dir(str(cfg.paths.output_dir))
    device = resolve_device(cfg.device)
    with torch_runtime(cfg.seed, cfg.torch_threads):
        run = load_for_app(cfg)
        report = _evaluate_run(cfg, run, device, started)
    report.write_all(out_dir)
    print_report(report, out_dir)
    log.info("evaluation written to %s", out_dir)
    return report


def _evaluate_run(cfg: DictConfig, run: Any, device: Any, started: float) -> Any:
    from lsa_train.app import overrides
    from lsa_train.app.checkpoint_loading import run_facts, threads_for_model
    from lsa_train.evaluation import evaluate_robustness

    threads = threads_for_model(cfg.torch_threads, run.model)

    datamodule = run.datamodule
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    eps = float(cfg.pgd.eps) if cfg.pgd.eps is not None else run.training_eps()
    extra_warnings: list[str] = []
    if cfg.pgd.eps is None and run.attack_norm() != "linf":
        extra_warnings.append(f"the run was trained with an {run.attack_norm()} attack; its eps={eps:g} is used "
                              "as a Linf budget here (set pgd.eps for a meaningful Linf evaluation)")
    extra_warnings += overrides.inert_overrides("evaluate", cfg, overrides.hydra_task_overrides())
    extra_warnings += run.notes  # what a checkpoint without its run folder and the run config differ in
    aa_version = _autoattack_version(cfg, extra_warnings)
    if run.weights.startswith("no weights"):
        extra_warnings.append(f"{run.model_name} has no weights (no ckpt_path, model.checkpoint or pretrained "
                              "weights): the evaluated network is randomly initialized")
    model = run.model.to(device)
    log.info("evaluating %s (weights: %s) on the %s split, eps=%g, device %s", run.model_name, run.weights, cfg.split,
             eps, device)
    example = next(iter(loader))[0].to(device)
    adaptive = adaptive_setup.build(cfg, run, model, example, eps)
    masking = cfg.masking
    grid, grid_note = fgsm_grid(cfg, run, eps)
    report = evaluate_robustness(
        model, loader, eps,
        eps_grid=grid,
        pgd_steps=int(cfg.pgd.steps), pgd_alpha=None if cfg.pgd.alpha is None else float(cfg.pgd.alpha),
        pgd_restarts=int(cfg.pgd.restarts),
        autoattack_version=aa_version,
        autoattack_attacks=list(cfg.autoattack.attacks) if cfg.autoattack.attacks else None,
        autoattack_samples=_aa_samples(cfg.autoattack.n_samples),
        extra_attacks=adaptive.attacks, skipped_attacks=adaptive.skipped,
        masking_checks=bool(masking.enabled),
        masking_kwargs={k: masking[k] for k in ("tol", "square_queries", "square_max_samples", "large_eps",
                                                  "large_eps_max_acc", "drop_min_eps") if k in masking},
        seed=int(cfg.seed), device=device,
        max_samples=None if cfg.max_samples is None else int(cfg.max_samples),
        model_name=run.model_name, checkpoint=run.ckpt_path,
        metadata={**run_facts(run), "split": str(cfg.split), "device": str(device), "torch_threads": threads,
                  "fgsm_eps_grid": grid_note, **adaptive.facts},
    )
    report.warnings.extend(extra_warnings)
    report.metadata["wall_time_s"] = round(time.perf_counter() - started, 2)
    return report


def fgsm_grid(cfg: DictConfig, run: Any, eps: float) -> tuple[list[float], str]:
    """The FGSM radii and the report's line on where they come from.

    ``fgsm.eps_grid=auto``: 0, 1, ..., 5 times the run's training eps (``attack.eval_eps``, by default its
    ``attack.eps``; without a run, the evaluated ``eps``), plus the evaluated ``eps`` when ``pgd.eps`` differs,
    so that the masking check (a) compares FGSM and PGD at the same radius from the sweep. A list is used
    as given.
    """
    from lsa_train.evaluation import EPS_MULTIPLES, eps_multiples_grid

    if cfg.fgsm.eps_grid != "auto":
        grid = [float(e) for e in cfg.fgsm.eps_grid]
        return grid, "given (fgsm.eps_grid): " + ", ".join(f"{e:g}" for e in grid)
    base, source = eps, "the evaluated eps (pgd.eps)"
    if run.run_cfg is not None:
        base, source = run.training_eps(), "the run's training eps"
    grid = list(eps_multiples_grid(base, also=(eps,)))
    factors = f"{EPS_MULTIPLES[0]}..{EPS_MULTIPLES[-1]}"
    extra = "" if any(abs(eps - k * base) <= 1e-9 for k in EPS_MULTIPLES) else f", plus pgd.eps={eps:g}"
    return grid, f"auto: {factors} x eps {base:g} ({source}){extra}, capped at 1: " + ", ".join(f"{e:g}" for e in grid)


def _aa_samples(value: Any) -> int | str | None:
    """``autoattack.n_samples``: an integer, ``"auto"`` or ``None`` (see :func:`check_config`)."""
    return value if value is None or value == "auto" else int(value)


def _autoattack_version(cfg: DictConfig, warnings: list[str]) -> str | None:
    """``autoattack.version`` when enabled and the package is installed, else ``None`` (with a warning)."""
    if not cfg.autoattack.enabled:
        return None
    if importlib.util.find_spec("pyautoattack") is None:
        message = ("AutoAttack was skipped: the package pyautoattack is not installed "
                   "(pip install pyautoattack, or lsa_train[eval]); set autoattack.enabled=false to silence this")
        log.warning(message)
        warnings.append(message)
        return None
    return str(cfg.autoattack.version)


def print_report(report: Any, out_dir: Path) -> None:
    """Prints the metrics and warnings as a rich table."""
    from rich.console import Console
    from rich.table import Table

    from lsa_train.evaluation.report import WORST_CASE_SCOPE, masking_summary, metric_label, worst_case_label
    from lsa_train.evaluation.worst_case import WorstCase, describe

    samples = report.metadata.get("samples") or f"{report.n_samples} samples"
    table = Table(title=f"LSA robustness evaluation ({report.model_name}, {samples})",
                  header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    pct = _pct
    table.add_row("clean accuracy (%)", pct(report.clean_accuracy))
    if report.worst_case_accuracy is not None:
        table.add_row(f"[bold]{worst_case_label(report.worst_case)} (%)[/]",
                      f"[bold]{pct(report.worst_case_accuracy)}[/]")
        for name, entry in report.attacks.items():
            table.add_row(f"  {name} ({entry['n_samples']} samples) (%)", pct(entry["accuracy"]))
    for eps, acc in report.fgsm_sweep.items():
        table.add_row(f"FGSM accuracy at eps={eps:g} (%)", pct(acc))
    rg = report.rg_score
    table.add_row("R&G score (sum of FGSM accuracies, %)", "n/a" if rg is None else f"{rg:.2f}")
    settings = report.pgd_settings
    table.add_row(f"PGD-{settings.get('steps')} accuracy at eps={settings.get('eps', 0):g} (%)",
                  pct(report.pgd_accuracy))
    aa = report.autoattack_settings
    aa_samples = aa.get("subset") or f"{aa.get('n_samples', '?')} samples"
    table.add_row(f"AutoAttack accuracy ({aa_samples}) (%)" if aa else "AutoAttack accuracy",
                  pct(report.autoattack_accuracy) if report.autoattack_accuracy is not None else "not run")
    for name, value in report.other_metrics.items():
        table.add_row(f"{metric_label(name)} (%)", pct(value))
    table.add_row("output dir", str(out_dir))
    console = Console()
    console.print(table)
    if report.metadata.get("weights"):  # the same words as the training summary's
        console.print(f"weights: {report.metadata['weights']}", soft_wrap=True, markup=False, highlight=False)
    if report.worst_case:
        for line in describe(WorstCase.from_dict(report.worst_case)):
            console.print(f"worst case: {line}", soft_wrap=True, markup=False)
        console.print(f"worst case: {WORST_CASE_SCOPE}", soft_wrap=True, markup=False)
    for name, reason in report.skipped_attacks.items():
        console.print(f"not run: {name}: {reason}", soft_wrap=True, markup=False)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)
    lines = masking_summary(report.masking, report.warnings)
    console.print(f"gradient-masking checks: {lines[0]}", soft_wrap=True)
    for line in lines[1:]:
        console.print(f"  {line[2:]}", soft_wrap=True, markup=False)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


@hydra.main(version_base="1.3", config_path="pkg://lsa_train.conf", config_name="evaluate")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra task: evaluates and returns the PGD accuracy (for sweepers)."""
    mark_task_started()
    with config_errors_to_cli():
        report = evaluate(cfg)
        return report.pgd_accuracy
    return None


def main() -> None:
    """Console entry point (``lsa-evaluate``, ``python -m lsa_train.app.evaluate``): one-line errors,
    exit code 2 for bad input (see :mod:`lsa_train.app.cli`)."""
    run_cli(hydra_main, prog="lsa-evaluate")


__all__ = ["check_config", "evaluate", "hydra_main", "main", "print_report"]

if __name__ == "__main__":
    main()
