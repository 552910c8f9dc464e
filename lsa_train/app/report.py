"""The run summary: ``metrics.json`` and ``report.md`` in the run dir, and a rich table on the console."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lsa_train.utils.io import atomic_write_text

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


def fgsm_key(eps: float) -> str:
    """The test metric of the FGSM sweep at ``eps`` (as logged by ``LSARegularizedModule``)."""
    return f"test/acc_fgsm_{eps:g}"


def build_summary(
    *,
    metrics: Mapping[str, float],
    eps_grid: Sequence[float],
    run_dir: str | Path,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON-ready summary of a finished run.

    Args:
        metrics: All logged metrics (fit and test) as floats.
        eps_grid: The FGSM budgets of the test sweep.
        run_dir: The run's output dir.
        info: Extra facts (model, data, attack, MVL, checkpoints, timings, ...), copied as they are.
    """
    fgsm = {f"{eps:g}": metrics.get(fgsm_key(eps)) for eps in eps_grid}
    return {
        "status": "completed",
        "run_dir": str(run_dir),
        "acc_clean": metrics.get("test/acc_clean"),
        "acc_pgd": metrics.get("test/acc_pgd"),
        "fgsm": fgsm,
        "rg_score": metrics.get("test/rg_score"),
        **info,
        "metrics": dict(sorted(metrics.items())),
    }


def failure_summary(run_dir: str | Path, error: str, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run that raised ``error`` (one line)."""
    return {"status": "failed", "run_dir": str(run_dir), "error": error, **(info or {}), "metrics": {}}


def write_metrics_json(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Writes ``metrics.json`` (atomically; NaN/inf become ``null``)."""
    return atomic_write_text(Path(run_dir) / METRICS_FILE, json.dumps(_jsonable(summary), indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:.2f}"


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` rows of the summary table, shared by the console and ``report.md``."""
    eval_eps = summary.get("eval_eps")
    pgd_name = f"PGD-{summary.get('test_pgd_steps', '?')} accuracy (%)"
    if eval_eps is not None:
        pgd_name = f"PGD-{summary.get('test_pgd_steps', '?')} accuracy at eps={eval_eps:g} (%)"
    rows = [("weights", str(summary["weights"]))] if summary.get("weights") else []
    rows += [
        ("clean accuracy (%)", _pct(summary.get("acc_clean"))),
        (pgd_name, _pct(summary.get("acc_pgd"))),
    ]
    rows += [(f"FGSM accuracy at eps={eps} (%)", _pct(acc)) for eps, acc in (summary.get("fgsm") or {}).items()]
    rg = summary.get("rg_score")
    rows.append(("R&G score (sum of FGSM accuracies, %)", "n/a" if rg is None else f"{rg:.2f}"))
    rows.append(("final MVL", ", ".join(summary.get("mvl") or []) or "(none)"))
    if summary.get("lsa_term") is not None:
        rows.append(("LSA term active (training steps)", lsa_term_text(summary["lsa_term"])))
    if summary.get("resume_note"):
        rows.append(("resumed", str(summary["resume_note"])))
    wall = f"{summary.get('wall_time_s', 0):.1f}"
    if summary.get("wall_time_before_resume_s") is not None:  # a resumed run: both parts
        wall += (f" ({summary['wall_time_before_resume_s']:.1f} before the resume + "
                 f"{summary.get('wall_time_this_part_s', 0):.1f})")
    rows.append(("epochs / wall time (s)", f"{summary.get('epochs', '?')} / {wall}"))
    return rows


def lsa_term_text(usage: Mapping[str, Any]) -> str:
    """On what share of the training steps the LSA term was in the loss (see
    :meth:`lsa_train.training.LSARegularizedModule.lsa_term_usage`)."""
    if not usage.get("configured"):
        return "off by configuration (lambda 0)"
    active, steps = int(usage.get("active_steps") or 0), int(usage.get("training_steps") or 0)
    if not steps:
        return "no training steps"
    text = f"{100.0 * active / steps:.1f}% of {steps} steps"
    return text if active == steps else f"{text} (MVL empty on {steps - active})"


def path_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, path)`` rows of what the next command needs: the tested and last checkpoints, the run dir."""
    rows = [("tested checkpoint", str(summary.get("tested_checkpoint") or "current weights"))]
    if summary.get("last_checkpoint"):
        rows.append(("last checkpoint", str(summary["last_checkpoint"])))
    if summary.get("best_checkpoint") and summary["best_checkpoint"] != summary.get("tested_checkpoint"):
        rows.append(("best checkpoint", str(summary["best_checkpoint"])))
    rows.append(("run dir", str(summary.get("run_dir"))))
    return rows


def write_report_md(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Writes ``report.md``: the setting and the summary table."""
    setting = summary.get("setting") or {}
    lines = ["# LSA training report", ""]
    if setting:
        lines += [", ".join(f"**{k}**: `{v}`" for k, v in setting.items()), ""]
    lines += ["| metric | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(summary)]
    lines += [f"| {name} | `{value}` |" for name, value in path_rows(summary)]
    history = summary.get("mvl_history") or []
    if history:
        lines += ["", "## MVL refreshes", "", "| epoch | step | MVL |", "|---:|---:|---|"]
        lines += [f"| {h.get('epoch')} | {h.get('step')} | {', '.join(h.get('mvl') or []) or '(none)'} |"
                  for h in history]
    lines += _history_figure_lines(run_dir, summary.get("mvl_history_files") or {})
    lines += _notes_lines(summary.get("notes") or [])
    lines += ["", "Accuracies are on the test split; the R&G score sums the FGSM accuracies over the grid",
              "(Khalooei et al.). FGSM alone can overstate robustness: compare with the PGD row.", ""]
    return atomic_write_text(Path(run_dir) / REPORT_FILE, "\n".join(lines))


def _history_figure_lines(run_dir: str | Path, files: Mapping[str, str]) -> list[str]:
    """The MVL-over-the-run heatmap and its CSV as Markdown links relative to ``run_dir``."""
    if not files.get("figure"):
        return []

    def link(path: str) -> str:
        try:
            return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
        except ValueError:  # written outside the run dir
            return Path(path).as_posix()

    lines = ["", "Mean CM of every probe at every refresh (red: the MVL regularized until the next refresh):", "",
             f"![MVL over the run]({link(files['figure'])})"]
    if files.get("csv"):
        lines += ["", f"Data: [{Path(files['csv']).name}]({link(files['csv'])})"]
    return lines


def _notes_lines(notes: Sequence[str]) -> list[str]:
    """``report.md``'s notes: what the run did that the user may not have asked for (e.g. probes that miss
    layers), one bullet each."""
    if not notes:
        return []
    return ["", "## Notes", "", *(f"- {note}" for note in notes)]


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """Prints the summary table with rich, then the checkpoint and run-dir paths as plain lines, whole
    (a table cell would cut them at the terminal's width, and they are what the next command needs), then the
    run's notes (``summary["notes"]``), one per line."""
    console = console or Console()
    table = Table(title="LSA training summary", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    console.print(table)
    for name, path in path_rows(summary):
        console.print(f"{name}: {path}", soft_wrap=True, markup=False, highlight=False)
    for note in summary.get("notes") or []:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
