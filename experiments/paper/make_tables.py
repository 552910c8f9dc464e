"""Regenerates ``RESULTS.md`` and the figures from the raw per-run JSON files of the paper scripts.

Reads ``<results>/raw/*.json`` (one file per config and seed, written by ``run_moons.py`` /
``run_digits.py``) and ``<results>/meta_*.json`` (command, settings, machine, wall time), averages
over seeds (mean +- sample std), compares every LR variant with its base by a paired t-test over
seeds, and writes the Markdown page plus PNG figures (matplotlib object API, Agg canvas).

Example:
    python experiments/paper/make_tables.py
    python experiments/paper/make_tables.py --results /tmp/quick --md /tmp/quick/RESULTS.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EPS_KEYS = ("0", "0.1", "0.2", "0.3", "0.4", "0.5")
BASE_ORDER = ("Normal", "AT-FGSM", "AT-PGD", "AT-TRADES", "AT-FAST", "AT-APGD")
LR_ORDER = ("", "-LR-L0", "-LR-L1", "-LR-L2", "-LR-auto")
#: Base rows of the digits table of other base defenses (``run_digits.py --part bases``), each with its LR-L0.
DIGITS_BASES = ("AT-PGD", "AT-PGD+AWP", "AT-MART", "AT-TRADES", "AT-TRADES+AWP")

#: The paper's rows (accuracy % at FGSM eps 0, .1, .2, .3, .4, .5, then R&G); see lsa-method.md.
PAPER_MOONS: dict[str, tuple[float, ...]] = {
    "Normal": (97.07, 93.63, 82.5, 76.83, 63.79, 52.35, 466.17),
    "AT-FGSM": (95.86, 91.98, 87.88, 81.33, 70.54, 58.69, 486.28),
    "AT-PGD": (86.5, 83.89, 80.87, 76.61, 72.57, 60.02, 460.46),
    "AT-TRADES": (96.17, 93.06, 85.78, 74.2, 68.62, 59.68, 477.51),
    "AT-FAST": (94.32, 89.72, 84.91, 78.35, 70.18, 61.65, 479.13),
    "AT-FGSM-LR-L2": (93.98, 93.01, 89.12, 84.01, 75.15, 63.25, 498.52),
    "AT-PGD-LR-L2": (88.78, 86.93, 81.25, 77.01, 72.81, 66.58, 473.36),
    "AT-FAST-LR-L2": (92.91, 90.31, 86.26, 81.53, 75.09, 67.65, 493.75),
    "AT-TRADES-LR-L2": (96.67, 93.2, 86.56, 81.25, 79.5, 68.65, 505.83),
}
PAPER_MNIST: dict[str, tuple[float, ...]] = {
    "Normal": (98.82, 82.1, 47.2, 17.87, 6.96, 4.25, 257.2),
    "AT-APGD": (99.36, 98.54, 97.67, 96.97, 71.72, 33.73, 497.99),
    "AT-APGD-LR-L0": (98.97, 98.11, 97.36, 97.17, 94.6, 55.52, 541.73),
}

Record = dict[str, Any]


# -- loading and statistics ------------------------------------------------------------------------
def load_records(results: Path) -> list[Record]:
    """All raw run records under ``<results>/raw``."""
    return [json.loads(p.read_text()) for p in sorted((results / "raw").glob("*.json"))]


def load_meta(results: Path) -> list[Record]:
    """All ``meta_*.json`` files (one per script invocation part)."""
    return [json.loads(p.read_text()) for p in sorted(results.glob("meta_*.json")) if "adaptive" not in p.name]


def group_runs(records: Sequence[Record], dataset: str) -> dict[str, list[Record]]:
    """``{run_id: [records sorted by seed]}`` for one dataset."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        if rec["dataset"] == dataset:
            groups[rec["run_id"]].append(rec)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def metric_values(record: Record) -> dict[str, float]:
    """Flat ``{column: value in percent}`` of one run (``nan`` where not measured)."""
    m = record["metrics"]
    row = {f"fgsm_{k}": 100.0 * m["fgsm"][k] for k in EPS_KEYS}
    row["rg"] = m["rg"]
    for eps, acc in m["pgd"].items():
        row[f"pgd_{eps}"] = 100.0 * acc
    aa = m.get("autoattack")
    row["aa"] = 100.0 * aa["robust_accuracy"] if aa else math.nan
    row["pgd_aa_subset"] = 100.0 * aa["pgd_same_subset"] if aa and "pgd_same_subset" in aa else math.nan
    return row


def summarize(runs: Sequence[Record]) -> dict[str, tuple[float, float]]:
    """``{column: (mean, std)}`` over the seeds of one config."""
    values = [metric_values(r) for r in runs]
    keys = [k for k in values[0] if all(k in v for v in values)]
    return {k: mean_std([v[k] for v in values]) for k in keys}


def table_rows(groups: dict[str, list[Record]], run_ids: Sequence[str], label: str = "name") -> list[dict[str, Any]]:
    """One row per present run id: label (``name`` or ``run_id``), seeds, ``{column: (mean, std)}``."""
    rows = []
    for run_id in run_ids:
        runs = groups.get(run_id)
        if runs:
            rows.append({"run_id": run_id, "name": runs[0][label], "n": len(runs), "stats": summarize(runs)})
    return rows


def paired_diff(lr_runs: Sequence[Record], base_runs: Sequence[Record], column: str) -> dict[str, float]:
    """Paired (same seed) difference LR - base of one column: mean, std, n, t and two-sided p."""
    base = {r["seed"]: metric_values(r)[column] for r in base_runs}
    diffs = [metric_values(r)[column] - base[r["seed"]] for r in lr_runs if r["seed"] in base]
    mean, std = mean_std(diffs)
    n = len(diffs)
    t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else math.nan
    return {"mean": mean, "std": std, "n": n, "t": t, "p": _t_pvalue(t, n - 1)}


def _t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value of Student's t (scipy if available, else nan)."""
    if math.isnan(t) or df < 1:
        return math.nan
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return math.nan
    return float(2 * stats.t.sf(abs(t), df))


# -- formatting --------------------------------------------------------------------------------------
def fmt(stat: tuple[float, float] | None, digits: int = 1) -> str:
    """``mean ± std`` or ``-`` when missing."""
    if stat is None or math.isnan(stat[0]):
        return "-"
    return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(rows: Sequence[dict[str, Any]], pgd_eps: Sequence[str], aa_label: str, paper: dict) -> str:
    """The main table: FGSM grid, R&G, PGD-20, AutoAttack, and the paper's R&G where it exists."""
    header = ["training", "seeds", *[f"FGSM {e}" for e in EPS_KEYS], "R&G"]
    header += [f"PGD-20 {e}" for e in pgd_eps] + [aa_label, "paper R&G"]
    body = []
    for row in rows:
        s = row["stats"]
        cells = [row["name"], str(row["n"]), *[fmt(s.get(f"fgsm_{k}")) for k in EPS_KEYS], fmt(s.get("rg"))]
        cells += [fmt(s.get(f"pgd_{e}")) for e in pgd_eps] + [fmt(s.get("aa"))]
        cells.append(f"{paper[row['name']][-1]:.2f}" if row["name"] in paper else "-")
        body.append(cells)
    return markdown_table(header, body)


def paper_table(paper: dict[str, tuple[float, ...]]) -> str:
    """The paper's rows, as reported (FGSM only)."""
    header = ["training (paper)", *[f"FGSM {e}" for e in EPS_KEYS], "R&G"]
    return markdown_table(header, [[name, *[f"{v:g}" for v in vals]] for name, vals in paper.items()])


def comparison_table(
    groups: dict[str, list[Record]],
    pairs: Sequence[tuple[str, str]],
    columns: Sequence[str],
    names: tuple[str, str] = ("LR run", "base"),
) -> str:
    """Paired run - reference differences (percentage points) with the paired t-test p-value per column."""
    labels = [column_label(c) for c in columns]
    header = [*names, "seeds"] + [f"Δ {c}" for c in labels] + [f"p ({c})" for c in labels]
    body = []
    for lr_id, base_id in pairs:
        if lr_id not in groups or base_id not in groups:
            continue
        diffs = [paired_diff(groups[lr_id], groups[base_id], c) for c in columns]
        cells = [lr_id, base_id, str(diffs[0]["n"])]
        cells += [fmt((d["mean"], d["std"])) for d in diffs]
        cells += ["-" if math.isnan(d["p"]) else f"{d['p']:.2f}" for d in diffs]
        body.append(cells)
    return markdown_table(header, body)


def column_label(column: str) -> str:
    """Human name of a metric column."""
    if column.startswith("fgsm_"):
        return "clean" if column == "fgsm_0" else f"FGSM {column[5:]}"
    if column.startswith("pgd_"):
        return f"PGD-20 {column[4:]}"
    return {"rg": "R&G", "aa": "AA"}.get(column, column)


# -- figures -----------------------------------------------------------------------------------------
def plot_fgsm_sweeps(groups: dict[str, list[Record]], bases: Sequence[str], path: Path) -> bool:
    """FGSM accuracy vs eps per base method (one panel each), base vs its LR variants, error bars = std."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bases = [b for b in bases if b in groups]
    if not bases:
        return False
    fig = Figure(figsize=(4.2 * len(bases), 3.6), tight_layout=True)
    FigureCanvasAgg(fig)
    eps = [float(e) for e in EPS_KEYS]
    for i, base in enumerate(bases):
        ax = fig.add_subplot(1, len(bases), i + 1)
        for suffix in LR_ORDER:
            run_id = next((k for k in groups if k == base + suffix or k == f"{base}{suffix}_lam1"), None)
            if run_id is None:
                continue
            stats = summarize(groups[run_id])
            means = [stats[f"fgsm_{k}"][0] for k in EPS_KEYS]
            stds = [stats[f"fgsm_{k}"][1] for k in EPS_KEYS]
            ax.errorbar(eps, means, yerr=stds, marker="o", ms=3, capsize=2, label=(suffix.lstrip("-") or "base"))
        if "Normal" in groups and base != "Normal":
            stats = summarize(groups["Normal"])
            ax.plot(eps, [stats[f"fgsm_{k}"][0] for k in EPS_KEYS], "k:", label="Normal")
        ax.set_title(base)
        ax.set_xlabel("FGSM eps ([0,1] input units)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def plot_lambda_sweep(
    groups: dict[str, list[Record]], bases: Sequence[str], lambdas: Sequence[float], path: Path
) -> bool:
    """Clean, PGD-20 and AutoAttack accuracy vs lambda for ``<base>-LR-L2``; dashed lines: the base (lambda 0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bases = [b for b in bases if any(f"{b}-LR-L2_lam{lam:g}" in groups for lam in lambdas)]
    if not bases:
        return False
    fig = Figure(figsize=(4.5 * len(bases), 3.6), tight_layout=True)
    FigureCanvasAgg(fig)
    for i, base in enumerate(bases):
        ax = fig.add_subplot(1, len(bases), i + 1)
        present = [lam for lam in lambdas if f"{base}-LR-L2_lam{lam:g}" in groups]
        base_stats = summarize(groups[base]) if base in groups else None
        for column, color in (("fgsm_0", "C0"), ("pgd_0.1", "C1"), ("aa", "C2")):
            stats = [summarize(groups[f"{base}-LR-L2_lam{lam:g}"]).get(column, (math.nan, math.nan)) for lam in present]
            ax.errorbar(
                present,
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                color=color,
                marker="o",
                ms=3,
                capsize=2,
                label=column_label(column),
            )
            if base_stats and column in base_stats:
                ax.axhline(base_stats[column][0], color=color, ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{base}-LR-L2 (dashed: {base})")
        ax.set_xlabel("lambda")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


# -- the page ----------------------------------------------------------------------------------------
def ordered_ids(groups: dict[str, list[Record]], lam: float = 1.0) -> list[str]:
    """Run ids of the main table in paper order (base, then its LR variants at ``lam``)."""
    ids = []
    for base in BASE_ORDER:
        for suffix in LR_ORDER:
            run_id = base + suffix + (f"_lam{lam:g}" if suffix else "")
            if run_id in groups:
                ids.append(run_id)
    return ids


def lr_pairs(run_ids: Sequence[str]) -> list[tuple[str, str]]:
    """``(LR run id, base run id)`` for every LR run whose base ran too."""
    pairs = []
    for run_id in run_ids:
        if "-LR-" in run_id:
            base = run_id.split("-LR-")[0]
            if base in run_ids:
                pairs.append((run_id, base))
    return pairs


def setup_section(metas: Sequence[Record], groups: dict[str, list[Record]]) -> str:
    """Command, settings, machine, wall time and date of every script invocation."""
    parts = []
    run_seconds = sum(r["train_seconds"] + r["eval_seconds"] for runs in groups.values() for r in runs)
    invocations = [inv for meta in metas for inv in [*meta.get("previous", []), meta]]
    for meta in invocations:
        settings = {k: v for k, v in meta["settings"].items() if v not in (None, {}, [])}
        machine = meta["machine"]
        parts.append(
            f"- `{meta['command']}` (part `{meta.get('tag', 'all')}`): started {meta['started']} UTC, "
            f"wall {meta['wall_seconds'] / 60:.1f} min for the runs not already on disk; "
            f"seeds {meta['seeds']}, {len(meta['configs'])} configs.\n"
            f"  - settings: `{json.dumps(settings)}`\n"
            f"  - machine: {machine['cpu']}, {machine['cores']} cores (shared with other jobs), "
            f"torch {machine['torch']} with {machine['torch_threads']} thread(s), lightning {machine['lightning']}, "
            f"Python {machine['python']}, lsa_train commit {machine.get('lsa_train_commit') or 'not recorded'}"
        )
    parts.append(f"- Sum of per-run train+eval time over the runs in this table: {run_seconds / 60:.1f} min.")
    return "\n".join(parts)


def masking_section(groups: dict[str, list[Record]], run_ids: Sequence[str], fgsm_key: str, pgd_key: str) -> str:
    """FGSM vs PGD vs AutoAttack at the training eps, and the library's masking warnings per config."""
    header = [
        "training",
        f"FGSM {fgsm_key}",
        f"PGD-20 {pgd_key} (full test)",
        "PGD-20 (AA subset)",
        "AA (subset)",
        "FGSM − PGD",
        "masking warnings (seeds)",
    ]
    body = []
    for run_id in run_ids:
        runs = groups[run_id]
        s = summarize(runs)
        fg, pg = s.get(f"fgsm_{fgsm_key}"), s.get(f"pgd_{pgd_key}")
        gap = (fg[0] - pg[0], 0.0) if fg and pg else None
        warned = sum(1 for r in runs if r["metrics"].get("masking_warnings"))
        body.append(
            [
                runs[0]["name"],
                fmt(fg),
                fmt(pg),
                fmt(s.get("pgd_aa_subset")),
                fmt(s.get("aa")),
                "-" if gap is None else f"{gap[0]:.1f}",
                f"{warned}/{len(runs)}",
            ]
        )
    return markdown_table(header, body)


def mvl_section(groups: dict[str, list[Record]]) -> str:
    """Which probe the automatic MVL (top-1 LSA) ended on, and how often it switched."""
    lines = []
    for run_id, runs in sorted(groups.items()):
        if "-LR-auto" not in run_id:
            continue
        finals = [",".join(r["mvl"]) for r in runs]
        switches = [
            sum(1 for a, b in itertools.pairwise(h) if a["mvl"] != b["mvl"])
            for h in (r["mvl_history"] or [] for r in runs)
        ]
        lines.append(f"- {run_id}: final MVL per seed {finals}; MVL changes during training per seed {switches}")
    return "\n".join(lines) if lines else "- (no automatic-MVL runs)"


def aa_description(groups: dict[str, list[Record]]) -> str:
    """Which AutoAttack components ran / were skipped, eps and n."""
    for runs in groups.values():
        aa = runs[0]["metrics"].get("autoattack")
        if aa:
            skipped = "; ".join(f"{k} skipped ({v})" for k, v in aa["skipped"].items()) or "none skipped"
            return (
                f"AutoAttack `{aa['version']}` at eps {aa['eps']:g} on the first {aa['n_samples']} test points: "
                f"ran {aa['attacks']}; {skipped}."
            )
    return "AutoAttack: not run."


def moons_section(records: Sequence[Record], results: Path, figures: bool) -> str:
    """Table 2 analog: main table, paired comparison, lambda sweep, masking, MVL."""
    groups = group_runs(records, "moons")
    if not groups:
        return "## Moons, model A (Table 2 analog)\n\nNot run.\n"
    ids = ordered_ids(groups)
    rows = table_rows(groups, ids)
    pgd_eps = sorted({k[4:] for r in rows for k in r["stats"] if k.startswith("pgd_") and k != "pgd_aa_subset"})
    out = ["## Moons, model A (Table 2 analog)", ""]
    first = next(iter(groups.values()))[0]
    out.append(
        f"Accuracy in %, mean ± sample std over seeds, on the {first['metrics']['n_test']}-point test split. "
        f"Training eps {first['settings']['eps']:g}; all eps are Linf radii in units of the inputs rescaled to "
        "[0, 1] per feature (the paper's moons inputs are unscaled, so its eps are not directly comparable: 0.1 "
        "here is about 0.3 raw units along x and 0.15 along y). " + aa_description(groups) + " "
        + provenance(groups, list(groups))
    )
    out += ["", "### Table M1: our results (lambda = 1 for the LR rows)", ""]
    out.append(results_table(rows, pgd_eps, "AutoAttack", PAPER_MOONS))
    out += [
        "",
        "### Table M2: the paper's Table 2 (as reported; unscaled moons, FGSM only)",
        "",
        paper_table(PAPER_MOONS),
    ]
    columns = ["fgsm_0", "rg", *[f"pgd_{e}" for e in pgd_eps], "aa"]
    out += ["", "### Table M3: LR minus its base, paired over seeds (percentage points)", ""]
    out.append(
        "Δ = mean ± std of the per-seed difference (same seed = same data draw, split and init); "
        "p = two-sided paired t-test (with 3 seeds only a large, consistent effect reaches p < 0.05)."
    )
    out += ["", comparison_table(groups, lr_pairs(ids), columns)]
    sweep_ids = [k for k in groups if "-LR-L2_lam" in k]
    lambdas = sorted({float(k.split("_lam")[1]) for k in sweep_ids})
    sweep_rows = []
    for base in ("AT-PGD", "AT-FGSM"):
        for run_id in ([base] if base in groups else []) + [f"{base}-LR-L2_lam{lam:g}" for lam in lambdas]:
            if run_id in groups:
                sweep_rows.append(run_id)
    if sweep_rows:
        out += ["", "### Table M4: lambda sweep of LR-L2 (base row = lambda 0)", ""]
        out.append(results_table(table_rows(groups, sweep_rows, label="run_id"), pgd_eps, "AutoAttack", {}))
        out += ["", "Paired differences against the base, per lambda:", ""]
        pairs = [(r, r.split("-LR-")[0]) for r in sweep_rows if "-LR-" in r]
        out.append(comparison_table(groups, pairs, columns))
    fgsm_key, pgd_key = "0.1", "0.1"
    out += ["", "### Table M5: gradient-masking signs at eps 0.1 (the training eps)", ""]
    out.append(masking_section(groups, ids, fgsm_key, pgd_key))
    out += ["", "### Automatic MVL", "", mvl_section(groups)]
    if figures:
        made = []
        if plot_fgsm_sweeps(groups, ("AT-FGSM", "AT-PGD", "AT-TRADES", "AT-FAST"), results / "moons_fgsm_sweep.png"):
            made.append("![FGSM sweep](results/moons_fgsm_sweep.png)")
        if plot_lambda_sweep(groups, ("AT-PGD", "AT-FGSM"), lambdas, results / "moons_lambda_sweep.png"):
            made.append("![lambda sweep](results/moons_lambda_sweep.png)")
        if made:
            out += ["", "### Figures", "", *made]
    return "\n".join(out) + "\n"


def provenance(groups: dict[str, list[Record]], ids: Sequence[str]) -> str:
    """Which lsa_train commits the runs of ``ids`` came from, per row, and how many ran from a dirty tree."""
    by_commit: dict[str, list[str]] = defaultdict(list)
    dirty = 0
    for run_id in ids:
        for record in groups[run_id]:
            git = record.get("git") or {}
            commit = git.get("commit")
            by_commit[commit[:10] if commit else "not recorded"].append(f"{run_id.split('_lam')[0]}/s{record['seed']}")
            dirty += bool(git.get("dirty"))
    if len(by_commit) == 1:
        parts = next(iter(by_commit))
    else:
        parts = "; ".join(
            f"{commit} ({len(runs)} run{'s' * (len(runs) != 1)}{': ' + ', '.join(runs) if len(runs) <= 5 else ''})"
            for commit, runs in sorted(by_commit.items())
        )
    return f"lsa_train commit of the runs: {parts} ({dirty} run(s) from a dirty tree)."


def digits_section(records: Sequence[Record]) -> str:
    """Table 3 analog (digits 8x8, model B)."""
    groups = group_runs(records, "digits")
    if not groups:
        return "## Digits 8x8, model B (Table 3 analog)\n\nNot run.\n"
    ids = [i for i in ordered_ids(groups) if i.split("-LR-")[0] not in DIGITS_BASES]
    rows = table_rows(groups, ids)
    pgd_eps = sorted({k[4:] for r in rows for k in r["stats"] if k.startswith("pgd_") and k != "pgd_aa_subset"})
    eps = next(iter(groups.values()))[0]["settings"]["eps"]
    out = ["## Digits 8x8, model B (Table 3 analog)", ""]
    out.append(
        f"Accuracy in %, mean ± std over seeds, {next(iter(groups.values()))[0]['metrics']['n_test']}"
        f"-image test split, pixels in [0, 1]. Training eps {eps:g}. " + aa_description(groups) + " "
        + provenance(groups, ids)
    )
    out += ["", "### Table D1: our results", "", results_table(rows, pgd_eps, "AutoAttack", PAPER_MNIST)]
    out += ["", "### Table D2: the paper's Table 3 (MNIST 28x28, as reported, FGSM only)", "", paper_table(PAPER_MNIST)]
    columns = ["fgsm_0", "rg", *[f"pgd_{e}" for e in pgd_eps], "aa"]
    out += ["", "### Table D3: LR minus its base, paired over seeds (percentage points)", ""]
    out.append(comparison_table(groups, lr_pairs(ids), columns))
    key = f"{eps:g}"
    out += ["", f"### Table D4: gradient-masking signs at eps {key}", "", masking_section(groups, ids, key, key)]
    return "\n".join(out) + "\n"


def digits_bases_ids(groups: dict[str, list[Record]], lam: float = 1.0) -> list[str]:
    """Run ids of the other-base-defenses table present in ``groups``: each base, then its LR-L0."""
    ids = [i for b in DIGITS_BASES for i in (b, f"{b}-LR-L0_lam{lam:g}")]
    return [i for i in ids if i in groups]


def digits_bases_section(records: Sequence[Record]) -> str:
    """Digits, model B: AT-PGD, AT-PGD+AWP, AT-MART, AT-TRADES(+AWP) and their LR-L0 rows, paired over seeds."""
    title = "## Digits 8x8, model B: other base defenses (MART, AWP) with and without the LSA term"
    groups = group_runs(records, "digits")
    ids = digits_bases_ids(groups)
    if not ids:
        return f"{title}\n\nNot run.\n"
    rows = table_rows(groups, ids)
    pgd_eps = sorted({k[4:] for r in rows for k in r["stats"] if k.startswith("pgd_") and k != "pgd_aa_subset"})
    first = groups[ids[0]][0]
    settings = first["settings"]
    seeds = ", ".join(f"{i.split('_lam')[0]} {len(groups[i])}" for i in ids)
    out = [title, ""]
    out.append(
        f"Same data, model, eps ({settings['eps']:g}), {settings['epochs']} epochs and evaluation as Table D1"
        f"{'' if settings['epochs'] == 40 else ' (D1: 40 epochs, so these rows are compared with each other only)'}"
        f". PGD-{settings['attack_steps']} inner "
        f"maximization for AT-PGD and MART (MART: Gaussian start 0.001, beta {settings.get('mart_beta', 6.0):g}); "
        f"TRADES beta {settings['trades_beta']:g}; AWP gamma 5e-3 from epoch {settings.get('awp_warmup', 0)}; "
        f"LR-L0: lambda 1 on the first activation probe. Seeds per row: {seeds}. "
        + provenance(groups, ids)
    )
    out += ["", "### Table D5: results", "", results_table(rows, pgd_eps, "AutoAttack", {})]
    columns = ["fgsm_0", "rg", *[f"pgd_{e}" for e in pgd_eps], "aa"]
    out += ["", "### Table D6: each defense minus AT-PGD, paired over seeds (percentage points)", ""]
    against_pgd = [(i, "AT-PGD") for i in ids if i != "AT-PGD" and "-LR-" not in i]
    out.append(comparison_table(groups, against_pgd, columns, names=("run", "reference")))
    out += ["", "### Table D7: the LSA term (LR-L0) minus its base, paired over seeds (percentage points)", ""]
    out.append(comparison_table(groups, lr_pairs(ids), columns))
    awp_pairs = [(i, i.replace("+AWP", "")) for i in ids if i.endswith("+AWP") and i.replace("+AWP", "") in groups]
    out += ["", "### Table D8: AWP minus the same base without it, paired over seeds (percentage points)", ""]
    out.append(comparison_table(groups, awp_pairs, columns, names=("run", "reference")) if awp_pairs else "Not run.")
    key = f"{settings['eps']:g}"
    out += ["", f"### Table D9: gradient-masking signs at eps {key}", "", masking_section(groups, ids, key, key)]
    return "\n".join(out) + "\n"


def build_page(results: Path, figures: bool = True) -> str:
    """The whole RESULTS.md text."""
    from adaptive_tables import adaptive_section  # it imports this module's helpers
    records = load_records(results)
    metas = load_meta(results)
    conclusion = HERE / "conclusion.md"
    out = [
        "# LSA / AT-LR paper reproduction on CPU: moons (model A) and digits (model B)",
        "",
        "Generated by `python experiments/paper/make_tables.py` from the raw per-run JSON files in "
        "`experiments/paper/results/raw/`; do not edit by hand (the conclusion is kept in `conclusion.md`).",
        "",
        moons_section(records, results, figures),
        digits_section(records),
        digits_bases_section(records),
        adaptive_section(results),
        "## Setup (commands, configs, machine, wall time)",
        "",
        setup_section(metas, {f"{r['dataset']}/{r['run_id']}/{r['seed']}": [r] for r in records}),
        "",
    ]
    if conclusion.exists() and results.resolve() == (HERE / "results").resolve():
        out += [conclusion.read_text().strip(), ""]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder holding raw/ and meta_*.json")
    parser.add_argument("--md", type=Path, default=None, help="output Markdown (default: RESULTS.md next to results/)")
    parser.add_argument("--no-figures", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    md = args.md if args.md is not None else args.results.resolve().parent / "RESULTS.md"
    md.write_text(build_page(args.results, figures=not args.no_figures))
    print(f"wrote {md}")
    return md


if __name__ == "__main__":
    main()
