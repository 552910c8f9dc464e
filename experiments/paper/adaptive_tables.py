"""The tables of ``run_adaptive.py`` (issue 21): worst case per sample of each pair, and every attack's
accuracy, from ``<results>/raw_adaptive/*.json``. Used by ``make_tables.py``."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from make_tables import fmt, markdown_table, mean_std

from lsa_train.comparison.render import format_p
from lsa_train.comparison.stats import holm, paired_stats

Record = dict[str, Any]
#: Columns of the per-attack table, in the order the evaluation runs them.
ATTACK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pgd", "PGD-20"), ("autoattack", "AA"), ("pgd_ce_restarts", "PGD-CE x5"), ("pgd_margin", "CW x5"),
    ("feature_pgd_kappa_0", "feat k0"), ("feature_pgd_kappa_1", "feat k1"), ("feature_pgd_kappa_10", "feat k10"),
    ("transfer", "transfer"),
)
#: Part order of the pairs (the LR run ids' models and bases decide the rest).
MODEL_ORDER = ("cnn_b", "mlp_a")


def load_adaptive(results: Path) -> dict[str, list[Record]]:
    """``{"<model>/<run_id>": [records by seed]}`` of ``<results>/raw_adaptive``."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for path in sorted((results / "raw_adaptive").glob("*.json")):
        record = json.loads(path.read_text())
        groups[f"{record['model']}/{record['run_id']}"].append(record)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def _pct(values: Sequence[float]) -> tuple[float, float]:
    return mean_std([100.0 * v for v in values])


def _attack_accuracy(record: Record, name: str) -> float | None:
    entry = (record.get("attacks") or {}).get(name)
    return None if entry is None else entry.get("accuracy_on_common")


def pairs_of(groups: dict[str, list[Record]]) -> list[tuple[str, str]]:
    """``(lr group, base group)`` for every run with the term, ordered by model, base, name."""
    pairs = []
    for key, runs in groups.items():
        record = runs[0]
        if record["role"] != "lr":
            continue
        base_run_id = record["partner"].split("__")[1]
        pairs.append((key, f"{record['model']}/{base_run_id}"))

    return sorted(pairs, key=lambda pair: (_model_rank(pair[0].split("/")[0]), pair[1], pair[0]))


def _model_rank(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def paired(lr: Sequence[Record], base: Sequence[Record], value: Any) -> dict[str, float]:
    """Paired (same seed) LR - base difference of ``value(record)`` in percentage points, with the paired t-test
    p and the exact sign-flip p (:mod:`lsa_train.comparison.stats`, the statistics of ``lsa-compare``)."""
    by_seed = {r["seed"]: value(r) for r in base}
    stats = paired_stats([100.0 * (value(r) - by_seed[r["seed"]]) for r in lr if r["seed"] in by_seed])
    std = stats.std if stats.n > 1 else 0.0  # as make_tables.mean_std shows a single seed
    return {"mean": stats.mean, "std": std, "n": stats.n, "p": stats.p_t, "p_sign_flip": stats.p_sign_flip}


def _p(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "< 0.0001" if value < 1e-4 else (f"{value:.4f}" if value < 0.01 else f"{value:.2f}")


def worst_case_table(groups: dict[str, list[Record]]) -> str:
    """Table A1: per pair, clean / AutoAttack / worst case of base and LR, and the paired differences; the
    worst-case t-test p also Holm-adjusted over the rows of the table, and the exact sign-flip p."""
    header = ["model", "with the term", "base", "seeds", "clean base / LR", "AA base / LR", "worst case base / LR",
              "Δ AA", "p", "Δ worst case", "p", "sign-flip p", "Holm p"]
    body = []
    worst_p = []
    for lr_key, base_key in pairs_of(groups):
        if base_key not in groups:
            continue
        lr, base = groups[lr_key], groups[base_key]
        d_aa = paired(lr, base, lambda r: r["autoattack"])
        d_wc = paired(lr, base, lambda r: r["worst_case_accuracy"])
        worst_p.append(d_wc["p"])
        body.append([
            lr_key.split("/")[0], lr[0]["name"] + f" (λ {lr[0]['config']['lam']:g})", base[0]["name"], str(d_wc["n"]),
            f"{fmt(_pct([r['clean'] for r in base]))} / {fmt(_pct([r['clean'] for r in lr]))}",
            f"{fmt(_pct([r['autoattack'] for r in base]))} / {fmt(_pct([r['autoattack'] for r in lr]))}",
            f"{fmt(_pct([r['worst_case_accuracy'] for r in base]))} / "
            f"{fmt(_pct([r['worst_case_accuracy'] for r in lr]))}",
            fmt((d_aa["mean"], d_aa["std"])), _p(d_aa["p"]), fmt((d_wc["mean"], d_wc["std"])), _p(d_wc["p"]),
            format_p(d_wc["p_sign_flip"]),
        ])
    for row, adjusted in zip(body, holm(worst_p)):
        row.append(format_p(adjusted))
    return markdown_table(header, body)


def attacks_table(groups: dict[str, list[Record]]) -> str:
    """Table A2: every attack's accuracy per run (mean over seeds, on the samples every attack saw)."""
    header = ["model", "run", "seeds", *[label for _, label in ATTACK_COLUMNS], "worst case",
              "first breaks (beyond PGD)"]
    body = []
    keys = sorted(groups, key=lambda k: (_model_rank(k.split("/")[0]), k))
    for key in keys:
        runs = groups[key]
        config = runs[0]["config"]
        name = runs[0]["name"] + (f" (λ {config['lam']:g})" if config.get("lr") else "")
        cells = [key.split("/")[0], name, str(len(runs))]
        for name, _ in ATTACK_COLUMNS:
            values = [_attack_accuracy(r, name) for r in runs]
            cells.append(fmt(_pct([v for v in values if v is not None])) if all(v is not None for v in values) else "-")
        cells.append(fmt(_pct([r["worst_case_accuracy"] for r in runs])))
        firsts: dict[str, int] = defaultdict(int)
        for record in runs:
            for attack, count in (record["worst_case"].get("first_broken_by") or {}).items():
                if attack != "pgd":
                    firsts[attack] += count
        top = sorted(((c, a) for a, c in firsts.items() if c), reverse=True)[:2]
        cells.append(", ".join(f"{a} {c}" for c, a in top) or "none")
        body.append(cells)
    return markdown_table(header, body)


def provenance(groups: dict[str, list[Record]]) -> str:
    """The commits that trained and evaluated the runs, and how many were dirty."""
    train: dict[str, int] = defaultdict(int)
    evaluation: dict[str, int] = defaultdict(int)
    dirty = 0
    for runs in groups.values():
        for record in runs:
            train[(record["train"]["git"].get("commit") or "not recorded")[:10]] += 1
            evaluation[(record["eval_git"].get("commit") or "not recorded")[:10]] += 1
            dirty += bool(record["train"]["git"].get("dirty")) + bool(record["eval_git"].get("dirty"))
    def show(counts: dict[str, int]) -> str:
        return ", ".join(f"{c} ({n})" for c, n in sorted(counts.items()))
    return (f"Trained at lsa_train commit(s) {show(train)}; evaluated at {show(evaluation)} (runs per commit in "
            f"brackets; {dirty} train or eval step(s) from a dirty tree).")


def adaptive_section(results: Path) -> str:
    """The RESULTS.md section of ``run_adaptive.py``."""
    title = "## Digits: the LSA term under attacks that know it (issue 21)"
    groups = load_adaptive(results)
    if not groups:
        return f"{title}\n\nNot run.\n"
    first = next(iter(groups.values()))[0]
    settings, train = first["eval_settings"], first["train"]["settings"]
    n_test = first["worst_case"]["n_evaluated"]
    other_measures = sorted({r["eval_settings"]["feature_measure"] for runs in groups.values() for r in runs
                             if "feature_measure" in r["eval_settings"]})
    measure_note = f" (a run whose term used {' or '.join(other_measures)}: that measure)" if other_measures else ""
    weighted = all("feature_weights" in r["eval_settings"] for runs in groups.values() for r in runs)
    weight_note = "the run's lambda x " if weighted else ""
    duplicate_note = ("" if weighted or 0 not in settings["kappas"] else
                      " (these records predate per-attack seeds: kappa 0 is PGD-20's own examples, and the first "
                      "restart of PGD-CE x5 is PGD-20's random start)")
    out = [title, ""]
    out.append(
        f"sklearn digits, eps {settings['eps']:g}, {train['epochs']} epochs, the training of Table D5 (PGD-10 / "
        f"MART-10 / TRADES-10 inner attack, Adam lr {train['lr']:g}, batch {train['batch_size']}). Every network "
        f"is evaluated on the whole test split ({n_test} images) with PGD-{settings['pgd_steps']}, AutoAttack "
        f"({' + '.join(a.upper() for a in settings['autoattack_attacks'])}, 100 iterations), PGD on cross-entropy "
        f"and on the CW margin with {settings['restarts']} restarts, a feature-level PGD on cross-entropy + kappa x "
        f"{weight_note}the relative error{measure_note} at the regularized probe (kappa "
        f"{', '.join(f'{k:g}' for k in settings['kappas'])}){duplicate_note} and "
        "a transfer attack from the paired run of the same seed (a run with the term: its base; a base run: its "
        "LR-L0 run, whose probe its feature attack also uses). The worst case counts a sample as robust only if "
        "every attack failed on it. " + provenance(groups)
    )
    n_pairs = sum(base in groups for _, base in pairs_of(groups))
    out += ["", "### Table A1: worst case per sample, each run with the term against its base (accuracy %, "
                "differences in points, paired over seeds)", "",
            f"p: two-sided paired t-test; sign-flip p: exact two-sided sign-flip test over all 2^n sign assignments "
            f"(never below 2/2^n, 0.0625 for 5 seeds); Holm p: the worst-case t-test p Holm-adjusted over the "
            f"{n_pairs} rows of this table. The same statistics, for clean, PGD, AutoAttack and worst-case accuracy "
            "with 95 % intervals, are in `compare/adaptive/compare.md` (made by `lsa-compare`).", "",
            worst_case_table(groups)]
    out += ["", "### Table A2: each attack's accuracy (%, mean ± std over seeds) and the attacks that broke samples "
                "PGD-20 left", "", attacks_table(groups)]
    return "\n".join(out) + "\n"
