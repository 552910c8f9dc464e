"""``lsa-compare`` / ``python -m lsa_train.app.compare``: paired comparison of trained runs.

Takes run folders, a multirun folder or JSON records (see :mod:`lsa_train.comparison.records`), pairs the
runs that differ only in the ``--by`` key(s) and have the same seed, and reports per (context, baseline value
→ treatment value) row the per-pair differences of clean, PGD and worst-case accuracy in percentage points,
their mean ± sample std, the 95 % t interval, the paired t-test p and the exact sign-flip p, both
Holm-adjusted over the rows of each metric. Runs in no pair are listed with the reason. With ``--out DIR`` it
writes ``compare.md``, ``compare.csv``, ``pairs.csv`` and ``compare.png`` there; the report always goes to
stdout. A plain argparse program (it reads folders, not a Hydra config); bad input ends with one line on
stderr and exit code 2.

Examples:
    lsa-compare logs/train/multiruns/<sweep> --by regularizer.lambda --out compare/
    lsa-compare <run_a> <run_b> <run_c> <run_d> --by attack --baseline attack=pgd
    lsa-compare experiments/paper/results/raw_adaptive --by lr,lam,measure,stop_clean_grad \\
        --metrics clean,pgd,autoattack,worst_case --out compare/
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from lsa_train.comparison import (
    DEFAULT_METRICS,
    METRICS,
    CompareError,
    Provenance,
    load_runs,
    markdown,
    pair_runs,
    summarize,
    write_outputs,
)
from lsa_train.comparison.pairing import check_key, matches, parse_assignments

PROG = "lsa-compare"


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``lsa-compare``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pair runs that differ only in --by and share a seed; per row: per-pair Δ (percentage points), "
                    "mean ± std, 95 %% t interval, paired t-test and exact sign-flip p, Holm-adjusted over the rows "
                    "of each metric.",
        epilog="Inputs: run folders (.hydra/config.yaml + metrics.json, or an evaluation under eval/), multirun "
               "folders, or JSON records (.json, .jsonl, or a folder of .json files with seed, config and metrics).",
    )
    parser.add_argument("inputs", nargs="+", help="run folders, multirun folders, evaluation folders or record files")
    parser.add_argument("--by", required=True, type=_keys,
                        help="key(s) that differ within a pair, comma-separated (a config key such as "
                             "regularizer.lambda, a group such as regularizer, or a record config field)")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="the baseline value of a --by key (repeatable; a single --by key may be given as just "
                             "VALUE); default: the smallest value (null, false, 0, none, off first)")
    parser.add_argument("--metrics", type=_keys, default=list(DEFAULT_METRICS),
                        help=f"comma-separated, from {', '.join(METRICS)} (default: {','.join(DEFAULT_METRICS)})")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only runs with this setting (repeatable)")
    parser.add_argument("--ignore", type=_keys, default=[], help="keys that may differ within a pair, comma-separated")
    parser.add_argument("--seed-key", default="seed", help="the setting holding the seed (default: seed)")
    parser.add_argument("--source", choices=("auto", "train", "eval"), default="auto",
                        help="run folders: metrics of training (metrics.json) or of the newest evaluation "
                             "(eval/*/metrics.json); auto: the evaluations when every run has one")
    parser.add_argument("--pgd-eps", type=float, default=None,
                        help="records whose pgd is {eps: accuracy}: the eps to compare")
    parser.add_argument("--out", default=None, help="folder for compare.md, compare.csv, pairs.csv, compare.png")
    parser.add_argument("--force", action="store_true", help="overwrite outputs in --out that differ")
    return parser


def _baseline(items: Sequence[str], by: Sequence[str]) -> dict[str, str]:
    if len(items) == 1 and "=" not in items[0]:
        if len(by) != 1:
            raise CompareError(f"--baseline {items[0]}: with several --by keys write KEY=VALUE")
        return {by[0]: items[0]}
    return parse_assignments(items, "--baseline")


def run(argv: Sequence[str]) -> str:
    """Runs the comparison of ``argv`` (without the program name); returns the Markdown report.

    Raises:
        CompareError: Bad input (one line).
    """
    args = build_parser().parse_args(list(argv))
    loaded = load_runs(args.inputs, metrics=args.metrics, source=args.source, seed_key=args.seed_key,
                       pgd_eps=args.pgd_eps)
    runs = loaded.runs
    if not runs:
        reasons = "; ".join(f"{label}: {why}" for label, why in loaded.left_out[:3])
        raise CompareError(f"no runs with metrics in {', '.join(args.inputs)}" + (f" ({reasons})" if reasons else ""))
    where = parse_assignments(args.where, "--where")
    for key in where:
        check_key(runs, key, "--where")
    kept = [r for r in runs if all(k in r.settings and matches(r.settings[k], v) for k, v in where.items())]
    if not kept:
        raise CompareError(f"--where {' '.join(args.where)}: no run matches")
    pairing = pair_runs(kept, args.by, seed_key=args.seed_key, ignore=args.ignore,
                        baseline=_baseline(args.baseline, args.by))
    summary = summarize(pairing, args.metrics)
    if not summary.rows:
        raise CompareError(f"no pair has {', '.join(args.metrics)} in both runs; use --metrics to pick others")
    provenance = Provenance(
        command=shlex.join([PROG, *[a for a in argv]]), inputs=args.inputs,
        baseline=_baseline(args.baseline, args.by) if args.baseline else {}, ignore=args.ignore, where=where,
        filtered_out=len(runs) - len(kept), left_out=loaded.left_out, notes=loaded.notes)
    report = markdown(summary, provenance)
    if args.out is not None:
        paths = write_outputs(summary, provenance, args.out, force=args.force)
        report += f"\nWritten: {', '.join(str(p) for p in paths.values())}\n"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: prints the report; bad input is one line on stderr and exit code 2."""
    try:
        print(run(sys.argv[1:] if argv is None else argv), end="")
    except CompareError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
