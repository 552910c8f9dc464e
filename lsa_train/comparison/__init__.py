"""Paired comparisons of trained runs: ``lsa-compare`` as a library.

:func:`~lsa_train.comparison.records.load_runs` reads run folders, multirun folders or JSON records;
:func:`~lsa_train.comparison.pairing.pair_runs` pairs runs that differ only in the compared key(s) and share
a seed; :func:`~lsa_train.comparison.summary.summarize` computes per row the per-pair differences (percentage
points), mean ± sample std, 95 % t interval, paired t-test and exact sign-flip p, Holm-adjusted over the rows
of each metric (:mod:`~lsa_train.comparison.stats`); :mod:`~lsa_train.comparison.render` writes Markdown,
CSV and a figure. No torch import.
"""

from lsa_train.comparison.errors import CompareError
from lsa_train.comparison.pairing import Comparison, Pair, Pairing, pair_runs
from lsa_train.comparison.records import DEFAULT_METRICS, METRICS, LoadedRuns, Run, load_runs
from lsa_train.comparison.render import OUTPUT_FILES, Provenance, markdown, write_outputs
from lsa_train.comparison.stats import PairedStats, holm, paired_stats, sign_flip_p, t_interval, t_test
from lsa_train.comparison.summary import Row, Summary, summarize

__all__ = [
    "DEFAULT_METRICS", "METRICS", "OUTPUT_FILES", "CompareError", "Comparison", "LoadedRuns", "Pair", "PairedStats",
    "Pairing", "Provenance", "Row", "Run", "Summary", "holm", "load_runs", "markdown", "pair_runs", "paired_stats",
    "sign_flip_p", "summarize", "t_interval", "t_test", "write_outputs",
]
