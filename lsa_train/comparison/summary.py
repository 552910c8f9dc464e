"""The rows of a comparison: per (comparison, metric) the per-pair differences in percentage points, their
statistics, and the Holm adjustment over the rows of each metric (one family per metric)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lsa_train.comparison.pairing import Comparison, Pair, Pairing
from lsa_train.comparison.stats import PairedStats, holm, paired_stats


@dataclass(frozen=True)
class Row:
    """One comparison in one metric.

    Attributes:
        comparison: The context, baseline and treatment values and the pairs.
        metric: The metric name (a key of :data:`lsa_train.comparison.records.METRICS`).
        pairs: The pairs in which both runs have the metric, in seed order.
        stats: Statistics of ``100 * (treatment - baseline)``: **percentage points** of accuracy.
        p_t_holm: The paired t-test p, Holm-adjusted over the rows of this metric with a t p.
        p_sign_flip_holm: The sign-flip p, Holm-adjusted over the rows of this metric with a sign-flip p.
    """

    comparison: Comparison
    metric: str
    pairs: tuple[Pair, ...]
    stats: PairedStats
    p_t_holm: float
    p_sign_flip_holm: float


@dataclass
class Summary:
    """Rows by metric (in the order asked), plus the pairing they come from.

    Attributes:
        pairing: The pairs and the unpaired runs.
        rows: ``{metric: [Row, ...]}``; a metric no pair has is absent (see ``missing``).
        missing: Metrics asked for that no pair has in both runs.
        family_sizes: ``{metric: (rows with a t p, rows with a sign-flip p)}``, the Holm families.
    """

    pairing: Pairing
    rows: dict[str, list[Row]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    family_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


def summarize(pairing: Pairing, metrics: Sequence[str], level: float = 0.95) -> Summary:
    """Statistics of every comparison of ``pairing`` in every metric, with Holm over each metric's rows.

    Args:
        pairing: From :func:`lsa_train.comparison.pairing.pair_runs`.
        metrics: Metric names, in output order.
        level: Coverage of the t interval (0.95: a 95 % interval).
    """
    summary = Summary(pairing=pairing)
    for metric in metrics:
        rows = []
        for comparison in pairing.comparisons:
            pairs = tuple(p for p in comparison.pairs
                          if metric in p.baseline.metrics and metric in p.treatment.metrics)
            if not pairs:
                continue
            deltas = [100.0 * (p.treatment.metrics[metric] - p.baseline.metrics[metric]) for p in pairs]
            rows.append((comparison, pairs, paired_stats(deltas, level)))
        if not rows:
            summary.missing.append(metric)
            continue
        p_t = holm([s.p_t for _, _, s in rows])
        p_flip = holm([s.p_sign_flip for _, _, s in rows])
        summary.rows[metric] = [Row(c, metric, pairs, s, a, b) for (c, pairs, s), a, b in zip(rows, p_t, p_flip)]
        summary.family_sizes[metric] = (sum(s.p_t == s.p_t for _, _, s in rows),
                                        sum(s.p_sign_flip == s.p_sign_flip for _, _, s in rows))
    return summary
