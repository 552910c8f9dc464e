"""Rendering a :class:`~lsa_train.comparison.summary.Summary`: a Markdown report, a CSV of the rows, a CSV of
the pairs and a figure (per-pair differences as dots, the mean and its 95 % interval per row), written
atomically into one folder. Differences are in percentage points; the pair CSV also has each run's
accuracy as a fraction."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lsa_train.comparison.errors import CompareError
from lsa_train.comparison.pairing import ByValue, Comparison, show
from lsa_train.comparison.records import METRICS, Run
from lsa_train.comparison.summary import Row, Summary
from lsa_train.utils.io import atomic_write, atomic_write_text

#: Output files inside ``--out``: the report, the rows, the pairs, the figure.
OUTPUT_FILES = {"markdown": "compare.md", "csv": "compare.csv", "pairs": "pairs.csv", "figure": "compare.png"}


@dataclass
class Provenance:
    """What the report says about where its numbers come from.

    Attributes:
        command: The command line, shown verbatim.
        inputs: The input paths as given.
        baseline: The ``--baseline`` assignments (empty: the default rule).
        ignore: The ``--ignore`` keys.
        where: The ``--where`` filters.
        filtered_out: How many runs ``--where`` removed.
        left_out: ``(input, reason)`` for inputs that gave no run (no metrics, failed).
        notes: Further one-line notes of the loading.
    """

    command: str = ""
    inputs: Sequence[str] = ()
    baseline: dict[str, str] = field(default_factory=dict)
    ignore: Sequence[str] = ()
    where: dict[str, str] = field(default_factory=dict)
    filtered_out: int = 0
    left_out: Sequence[tuple[str, str]] = ()
    notes: Sequence[str] = ()


def format_p(p: float) -> str:
    """A p-value with four decimals (``< 0.0001`` below that, ``-`` when undefined)."""
    if math.isnan(p):
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def context_label(comparison: Comparison, keys: Sequence[str]) -> str:
    """The context settings that vary between contexts, ``key=value`` joined by spaces (``-`` if none)."""
    context = dict(comparison.context)
    return " ".join(f"{k}={show(context.get(k))}" for k in keys) or "-"


def change_label(by: Sequence[str], baseline: ByValue, treatment: ByValue) -> str:
    """``key: baseline → treatment`` for each ``by`` key whose value changes."""
    parts = [f"{k}: {show(b)} → {show(t)}" for k, b, t in zip(by, baseline, treatment) if b != t]
    return ", ".join(parts) or "(same values)"


def _signed(value: float) -> str:
    """``+1.2`` / ``-0.3``; a value that rounds to zero is ``+0.0`` (never ``-0.0``)."""
    if math.isnan(value):
        return "-"
    return f"{round(value, 1) + 0.0:+.1f}"


def _mean_std(row: Row) -> str:
    s = row.stats
    return _signed(s.mean) + ("" if math.isnan(s.std) else f" ± {s.std:.1f}")


def _interval(row: Row) -> str:
    s = row.stats
    return "-" if math.isnan(s.ci_low) else f"[{s.ci_low:+.1f}, {s.ci_high:+.1f}]"


def _seeds(row: Row) -> str:
    return ", ".join(show(p.seed) for p in row.pairs)


def markdown(summary: Summary, provenance: Provenance) -> str:
    """The report: how the pairs were formed and tested, one table per metric, then the runs in no pair."""
    pairing = summary.pairing
    by = ", ".join(pairing.by)
    n_runs = sum(1 for _ in _all_runs(summary))
    n_pairs = sum(len(c.pairs) for c in pairing.comparisons)
    baseline = (", ".join(f"{k}={v}" for k, v in provenance.baseline.items()) if provenance.baseline
                else "the smallest value of each context (null, false, 0, none, off first; then numbers; then text)")
    lines = [f"# Paired comparison by {by}", ""]
    if provenance.command:
        lines += [f"Made by `{provenance.command}`.", ""]
    ignore = f" and {', '.join(provenance.ignore)}" if provenance.ignore else ""
    lines.append(
        f"Pairs are runs that differ only in {by}{ignore} and have the same `{pairing.seed_key}`; baseline: "
        f"{baseline}. Δ = treatment − baseline accuracy in percentage points. Per row: the number of pairs n, the "
        "per-pair Δ in seed order, their mean ± sample std, the 95 % t interval of the mean, the two-sided paired "
        "t-test p (Student's t, n − 1 degrees of freedom), the exact two-sided sign-flip p over all 2^n sign "
        "assignments (it cannot go below 2/2^n: 0.0625 for n = 5), and both p-values Holm-adjusted over the rows "
        "of the same metric (the family size is in each heading; a row is significant at level α after the "
        "correction when its Holm p is below α)."
    )
    where = f"; --where {' '.join(f'{k}={v}' for k, v in provenance.where.items())} left out " \
            f"{provenance.filtered_out} run(s)" if provenance.where else ""
    lines += ["", f"Inputs: {', '.join(f'`{i}`' for i in provenance.inputs)}: {n_runs} runs, {n_pairs} pairs in "
                  f"{len(pairing.comparisons)} comparisons, {len(pairing.unpaired)} runs in no pair{where}."]
    lines += [f"Note: {note}" for note in provenance.notes]
    for metric, rows in summary.rows.items():
        n_t, n_flip = summary.family_sizes[metric]
        family = f"{n_t} rows" if n_t == n_flip else f"t-test {n_t} rows, sign-flip {n_flip} rows"
        lines += ["", f"## {METRICS[metric].label}: Δ in percentage points (Holm family: {family})", ""]
        header = (["context"] if pairing.context_keys else []) + [
            "change (baseline → treatment)", "n", "seeds", "Δ per pair", "mean ± std", "95 % CI", "t p",
            "sign-flip p", "Holm t p", "Holm sign-flip p"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = ([context_label(row.comparison, pairing.context_keys)] if pairing.context_keys else []) + [
                change_label(pairing.by, row.comparison.baseline, row.comparison.treatment), str(row.stats.n),
                _seeds(row), ", ".join(_signed(d) for d in row.stats.deltas), _mean_std(row), _interval(row),
                format_p(row.stats.p_t), format_p(row.stats.p_sign_flip), format_p(row.p_t_holm),
                format_p(row.p_sign_flip_holm)]
            lines.append("| " + " | ".join(cells) + " |")
    if summary.missing:
        lines += ["", f"No pair has {', '.join(METRICS[m].label for m in summary.missing)} in both runs."]
    if pairing.unpaired:
        lines += ["", "## Runs in no pair", "", "| run | seed | why |", "|---|---|---|"]
        lines += [f"| `{run.label}` | {show(run.seed)} | {reason} |" for run, reason in pairing.unpaired]
    if provenance.left_out:
        lines += ["", "## Inputs left out", "", "| input | why |", "|---|---|"]
        lines += [f"| `{label}` | {reason} |" for label, reason in provenance.left_out]
    return "\n".join(lines) + "\n"


def _all_runs(summary: Summary) -> Iterator[Run]:
    seen = set()
    for comparison in summary.pairing.comparisons:
        for pair in comparison.pairs:
            for run in (pair.baseline, pair.treatment):
                if id(run) not in seen:
                    seen.add(id(run))
                    yield run
    for run, _ in summary.pairing.unpaired:
        if id(run) not in seen:
            seen.add(id(run))
            yield run


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.10g}"


def rows_csv(summary: Summary) -> str:
    """One line per (metric, comparison): the statistics (differences in percentage points)."""
    pairing = summary.pairing
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "context", "change", "n", "seeds", "deltas_pp", "mean_pp", "std_pp", "ci95_low_pp",
                     "ci95_high_pp", "t", "p_t", "p_sign_flip", "p_t_holm", "p_sign_flip_holm", "holm_family"])
    for metric, rows in summary.rows.items():
        for row in rows:
            s = row.stats
            writer.writerow([
                metric, context_label(row.comparison, pairing.context_keys),
                change_label(pairing.by, row.comparison.baseline, row.comparison.treatment), s.n,
                ";".join(show(p.seed) for p in row.pairs), ";".join(_number(d) for d in s.deltas), _number(s.mean),
                _number(s.std), _number(s.ci_low), _number(s.ci_high), _number(s.t), _number(s.p_t),
                _number(s.p_sign_flip), _number(row.p_t_holm), _number(row.p_sign_flip_holm),
                summary.family_sizes[metric][0]])
    return buffer.getvalue()


def pairs_csv(summary: Summary) -> str:
    """One line per (metric, pair): both runs, both accuracies (fractions) and the difference (points)."""
    pairing = summary.pairing
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "context", "change", "seed", "baseline_run", "treatment_run", "baseline_accuracy",
                     "treatment_accuracy", "delta_pp"])
    for metric, rows in summary.rows.items():
        for row in rows:
            for pair in row.pairs:
                base, treat = pair.baseline.metrics[metric], pair.treatment.metrics[metric]
                writer.writerow([
                    metric, context_label(row.comparison, pairing.context_keys),
                    change_label(pairing.by, row.comparison.baseline, row.comparison.treatment), show(pair.seed),
                    pair.baseline.label, pair.treatment.label, _number(base), _number(treat),
                    _number(100.0 * (treat - base))])
    return buffer.getvalue()


def draw_figure(summary: Summary, path: str | Path, dpi: int = 110) -> Path:
    """One panel per metric: per-pair Δ (dots), mean (diamond) and 95 % t interval (bar) per row; PNG, atomic."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairing = summary.pairing
    comparisons = pairing.comparisons
    labels = [" ".join(x for x in (context_label(c, pairing.context_keys) if pairing.context_keys else "",
                                   change_label(pairing.by, c.baseline, c.treatment)) if x) for c in comparisons]
    metrics = list(summary.rows)
    fig = Figure(figsize=(1.6 + 3.4 * len(metrics), 1.4 + 0.42 * len(comparisons)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    index = {id(c): i for i, c in enumerate(comparisons)}
    for ax, metric in zip(axes, metrics):
        ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle="--")
        for row in summary.rows[metric]:
            y = index[id(row.comparison)]
            n = len(row.stats.deltas)
            offsets = [0.0] if n == 1 else [-0.2 + 0.4 * i / (n - 1) for i in range(n)]
            ax.scatter(row.stats.deltas, [y + o for o in offsets], s=12, color="tab:blue", alpha=0.7, zorder=2)
            if not math.isnan(row.stats.ci_low):
                ax.plot([row.stats.ci_low, row.stats.ci_high], [y, y], color="black", linewidth=1.5, zorder=3)
            ax.scatter([row.stats.mean], [y], marker="D", s=30, color="black", zorder=4)
        ax.set_title(f"{METRICS[metric].label}", fontsize=10)
        ax.set_xlabel("Δ (percentage points)")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(comparisons)))
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].set_ylim(len(comparisons) - 0.5, -0.5)
    fig.suptitle(f"Paired by seed, differing in {', '.join(pairing.by)}: per-pair Δ, mean and 95 % t interval",
                 fontsize=9)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


def write_outputs(summary: Summary, provenance: Provenance, out_dir: str | Path, *,
                  force: bool = False) -> dict[str, Path]:
    """Writes :data:`OUTPUT_FILES` into ``out_dir`` (created if needed), each file atomically.

    An existing report or CSV with other content is not overwritten unless ``force``; when the text outputs
    are unchanged the figure is redrawn. Nothing is written when one file is refused.

    Returns:
        ``{"markdown": path, "csv": path, "pairs": path, "figure": path}``.

    Raises:
        CompareError: ``out_dir`` is a file, or holds different outputs and ``force`` is false.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out}: is a file, not a folder")
    texts = {"markdown": markdown(summary, provenance), "csv": rows_csv(summary), "pairs": pairs_csv(summary)}
    if not force:
        changed = [OUTPUT_FILES[k] for k, text in texts.items()
                   if (out / OUTPUT_FILES[k]).is_file() and (out / OUTPUT_FILES[k]).read_text() != text]
        if changed:
            raise CompareError(f"--out {out}: {', '.join(changed)} already there with other content; pass --force to "
                               "overwrite, or choose another folder")
    paths = {k: atomic_write_text(out / OUTPUT_FILES[k], text) for k, text in texts.items()}
    paths["figure"] = draw_figure(summary, out / OUTPUT_FILES["figure"])
    return paths
