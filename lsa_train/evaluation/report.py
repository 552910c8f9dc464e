"""The evaluation report: one dataclass, written as Markdown, JSON, CSV and an accuracy plot.

Accuracies are stored as fractions in ``[0, 1]``; the Markdown shows percent. All files are
written atomically (temporary file + rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lsa_train.evaluation.plotting import plot_accuracy_vs_eps
from lsa_train.evaluation.robustness import rg_score
from lsa_train.evaluation.worst_case import WorstCase, describe
from lsa_train.utils.io import atomic_write_text

#: Prefix of the gradient-masking warnings (:data:`lsa_train.evaluation.masking.PREFIX`).
MASKING_PREFIX = "Possible gradient masking: "
#: Labels of the :attr:`EvaluationReport.other_metrics` keys that :func:`evaluate_robustness` writes.
METRIC_LABELS: dict[str, str] = {
    "square_accuracy": "Square Attack (black-box) accuracy (masking check c)",
    "pgd_accuracy_on_square_samples": "PGD accuracy on the Square samples (masking check c)",
}

#: What the worst case leaves out, said under it in the report.
WORST_CASE_SCOPE = (
    "A sample counts as robust only if it is correct clean and every attack above failed on it "
    "(Square, of masking check (c), on the samples it ran on); not part of it: the FGSM sweep, the masking "
    "checks' re-run of the same PGD and their PGD at a huge eps (outside the threat model)."
)
#: Version of the JSON layout written by :meth:`EvaluationReport.to_json`.
SCHEMA_VERSION = 2
#: File names written by :meth:`EvaluationReport.write_all`, by key.
REPORT_FILES: dict[str, str] = {
    "markdown": "report.md",
    "json": "metrics.json",
    "csv": "metrics.csv",
    "plot": "accuracy_vs_eps.png",
}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}%"


def _jsonable(value: Any) -> Any:
    """Converts tuples, Paths and non-finite floats to JSON-safe values (recursively)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class EvaluationReport:
    """Robustness evaluation of one model.

    Attributes:
        clean_accuracy: Clean accuracy, fraction in ``[0, 1]``.
        fgsm_sweep: FGSM ``{eps: accuracy}`` (Linf radii in input units).
        pgd_accuracy: PGD accuracy at ``pgd_settings["eps"]``, or ``None`` if not run.
        pgd_settings: PGD parameters (``eps``, ``alpha``, ``steps``, ``restarts``, ``norm``, ``seed``).
        autoattack_accuracy: AutoAttack robust accuracy, or ``None`` if not run.
        autoattack_settings: AutoAttack parameters and details (``eps``, ``norm``, ``version``,
            ``attacks``, ``per_attack``, ``n_samples``, ...).
        warnings: Warnings (gradient masking, unreliable evaluation), shown first in the Markdown.
        model_name: Name of the model, for the header.
        checkpoint: Path of the evaluated checkpoint.
        n_samples: Number of evaluated samples.
        other_metrics: Further named accuracies (e.g. ``"square_accuracy"``), fractions; shown
            under the labels of :data:`METRIC_LABELS` where they have one.
        metadata: Free-form extra information (data set, seed, time, ...), JSON-serializable.
        masking: Which gradient-masking checks ran: ``{"run": [labels], "skipped": {label:
            reason}}``; ``None`` when the checks were not run at all.
        worst_case_accuracy: The headline robust accuracy: the fraction of the samples every attack
            saw that are correct clean and under every attack; ``None`` if not computed.
        attacks: One entry per attack in run order: ``{"accuracy", "n_samples",
            "accuracy_on_common", "settings", "seconds"}`` (its own number, on its own samples).
        worst_case: :meth:`lsa_train.evaluation.worst_case.WorstCase.to_dict`: the common samples,
            whether the attacks saw the same ones, and which attack broke the samples lost.
        skipped_attacks: ``{attack: why it did not run}``.
    """

    clean_accuracy: float
    fgsm_sweep: dict[float, float]
    pgd_accuracy: float | None = None
    pgd_settings: dict[str, Any] = field(default_factory=dict)
    autoattack_accuracy: float | None = None
    autoattack_settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model_name: str | None = None
    checkpoint: str | None = None
    n_samples: int | None = None
    other_metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    masking: dict[str, Any] | None = None
    worst_case_accuracy: float | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    worst_case: dict[str, Any] = field(default_factory=dict)
    skipped_attacks: dict[str, str] = field(default_factory=dict)

    # -- derived ---------------------------------------------------------------------------
    @property
    def rg_score(self) -> float | None:
        """The paper's R&G score (sum of the FGSM accuracies in percent), ``None`` without eps 0."""
        try:
            return rg_score(self.fgsm_sweep)
        except ValueError:
            return None

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the sweep becomes a list of ``{"eps", "accuracy"}`` records."""
        data = asdict(self)
        data["fgsm_sweep"] = [{"eps": float(e), "accuracy": float(a)} for e, a in self.fgsm_sweep.items()]
        data["checkpoint"] = None if self.checkpoint is None else str(self.checkpoint)
        return {"schema_version": SCHEMA_VERSION, "rg_score": self.rg_score, **_jsonable(data)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        """Inverse of :meth:`to_dict` (derived keys such as ``rg_score`` are ignored)."""
        data = dict(data)
        data.pop("schema_version", None)
        data.pop("rg_score", None)
        sweep = data.pop("fgsm_sweep", [])
        data["fgsm_sweep"] = {float(r["eps"]): float(r["accuracy"]) for r in sweep}
        return cls(**data)

    def to_json(self, path: str | Path) -> Path:
        """Writes :meth:`to_dict` as indented JSON, atomically. Returns the path."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationReport:
        """Reads a report written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def metric_rows(self) -> list[dict[str, Any]]:
        """One row per metric: ``{"metric", "attack", "eps", "value", "unit"}``."""
        rows: list[dict[str, Any]] = [
            {"metric": "clean_accuracy", "attack": "none", "eps": 0.0, "value": self.clean_accuracy, "unit": "fraction"}
        ]
        for eps, acc in self.fgsm_sweep.items():
            rows.append({"metric": "fgsm_accuracy", "attack": "fgsm", "eps": eps, "value": acc, "unit": "fraction"})
        if self.rg_score is not None:
            rows.append({"metric": "rg_score", "attack": "fgsm", "eps": "", "value": self.rg_score, "unit": "percent"})
        if self.pgd_accuracy is not None:
            rows.append(
                {
                    "metric": "pgd_accuracy",
                    "attack": "pgd",
                    "eps": self.pgd_settings.get("eps", ""),
                    "value": self.pgd_accuracy,
                    "unit": "fraction",
                }
            )
        if self.autoattack_accuracy is not None:
            rows.append(
                {
                    "metric": "autoattack_accuracy",
                    "attack": "autoattack",
                    "eps": self.autoattack_settings.get("eps", ""),
                    "value": self.autoattack_accuracy,
                    "unit": "fraction",
                }
            )
        if self.worst_case_accuracy is not None:
            rows.append({"metric": "worst_case_accuracy", "attack": "all", "eps": self.pgd_settings.get("eps", ""),
                         "value": self.worst_case_accuracy, "unit": "fraction"})
        for name, entry in self.attacks.items():
            rows.append({"metric": "attack_accuracy", "attack": name, "eps": entry.get("settings", {}).get("eps", ""),
                         "value": entry["accuracy"], "unit": "fraction"})
        for name, value in self.other_metrics.items():
            rows.append({"metric": name, "attack": "", "eps": "", "value": value, "unit": "fraction"})
        rows.append({"metric": "n_warnings", "attack": "", "eps": "", "value": len(self.warnings), "unit": "count"})
        return rows

    def to_csv(self, path: str | Path) -> Path:
        """Writes :meth:`metric_rows` as CSV (header ``metric,attack,eps,value,unit``), atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["metric", "attack", "eps", "value", "unit"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.metric_rows())
        return atomic_write_text(path, buffer.getvalue())

    def to_markdown(self) -> str:
        """A human-readable Markdown summary; warnings come first, under a bold heading."""
        title = f"# Robustness evaluation: {self.model_name}" if self.model_name else "# Robustness evaluation"
        lines = [title, ""]
        if self.warnings:
            lines += [f"## ⚠️ Warnings ({len(self.warnings)})", ""]
            lines += [f"- **{w}**" for w in self.warnings]
            lines += ["", "Treat the accuracies below as upper bounds until these are resolved.", ""]
        info = [("Checkpoint", self.checkpoint), ("Samples", self.n_samples)]
        info += [(str(k), v) for k, v in self.metadata.items()]
        info = [(k, v) for k, v in info if v is not None]
        if info:
            rendered = [(k, _settings(v) if isinstance(v, dict) else v) for k, v in info]
            lines += ["| Field | Value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in rendered] + [""]

        rg = self.rg_score
        lines += ["## Summary", "", "| Metric | Value |", "|---|---|"]
        lines.append(f"| Clean accuracy | {_pct(self.clean_accuracy)} |")
        if self.worst_case_accuracy is not None:
            lines.append(f"| **{worst_case_label(self.worst_case)}** | **{_pct(self.worst_case_accuracy)}** |")
        if rg is not None:
            grid = ", ".join(f"{e:g}" for e in self.fgsm_sweep)
            lines.append(f"| R&G score (FGSM, eps in {{{grid}}}) | {rg:.2f} |")
        if self.pgd_accuracy is not None:
            lines.append(f"| PGD accuracy ({_settings(self.pgd_settings)}) | {_pct(self.pgd_accuracy)} |")
        if self.autoattack_accuracy is not None:
            aa = {k: self.autoattack_settings.get(k) for k in ("eps", "norm", "version", "n_samples", "subset")
                  if k in self.autoattack_settings}
            lines.append(f"| AutoAttack accuracy ({_settings(aa)}) | {_pct(self.autoattack_accuracy)} |")
        for name, value in self.other_metrics.items():
            lines.append(f"| {metric_label(name)} | {_pct(value)} |")
        lines.append("")

        if self.fgsm_sweep:
            lines += ["## FGSM accuracy vs. epsilon", "", "| eps | accuracy |", "|---|---|"]
            lines += [f"| {e:g} | {_pct(a)} |" for e, a in self.fgsm_sweep.items()]
            lines.append("")
        per_attack = self.autoattack_settings.get("per_attack")
        if per_attack:
            lines += ["## AutoAttack, robust accuracy after each attack", "", "| attack | accuracy |", "|---|---|"]
            lines += [f"| {name} | {_pct(acc)} |" for name, acc in per_attack.items()]
            lines.append("")
        lines += self._attack_lines()
        lines += ["## Gradient-masking checks", "", *masking_summary(self.masking, self.warnings), ""]
        return "\n".join(lines)

    def _attack_lines(self) -> list[str]:
        """The per-attack table under the worst case, what it covers, and the attacks not run."""
        if not self.attacks and not self.skipped_attacks:
            return []
        lines = ["## Attacks and the worst case per sample", ""]
        if self.attacks:
            n_common = self.worst_case.get("n_samples", "?")
            lines += [f"| attack | accuracy | samples | on the {n_common} common samples | first broke | "
                      "broke alone | seconds | settings |", "|---|---|---|---|---|---|---|---|"]
            first = dict(self.worst_case.get("first_broken_by", {}))
            only = dict(self.worst_case.get("only_broken_by", {}))
            for name, entry in self.attacks.items():
                credited = sum(n for key, n in first.items() if key == name or key.startswith(f"{name}/"))
                lines.append(
                    f"| {name} | {_pct(entry['accuracy'])} | {entry['n_samples']} | "
                    f"{_pct(entry['accuracy_on_common'])} | {credited} | {only.get(name, 0)} | "
                    f"{entry.get('seconds', '')} | `{_settings(entry.get('settings', {}))}` |"
                )
            lines.append("")
            if self.worst_case:
                lines += [f"- {line}" for line in describe(WorstCase.from_dict(self.worst_case))]
                lines += [f"- {WORST_CASE_SCOPE}"]
        lines += [f"- Not run: {name}: {reason}" for name, reason in self.skipped_attacks.items()]
        lines.append("")
        return lines

    def write_all(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``report.md``, ``metrics.json``, ``metrics.csv`` and ``accuracy_vs_eps.png``.

        Args:
            out_dir: Destination folder (created if missing).

        Returns:
            ``{"markdown": path, "json": path, "csv": path, "plot": path}``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # The plot's x axis is the Linf radius: L2 / L1 results are listed, not drawn.
        pgd_eps = self.pgd_settings.get("eps") if str(self.pgd_settings.get("norm", "linf")).lower() == "linf" else None
        aa_eps = (
            self.autoattack_settings.get("eps")
            if str(self.autoattack_settings.get("norm", "Linf")).lower() == "linf"
            else None
        )
        pgd = {float(pgd_eps): self.pgd_accuracy} if self.pgd_accuracy is not None and pgd_eps is not None else None
        aa = (
            {float(aa_eps): self.autoattack_accuracy}
            if self.autoattack_accuracy is not None and aa_eps is not None
            else None
        )
        title = f"{self.model_name}: accuracy vs. epsilon" if self.model_name else None
        paths = {
            "json": self.to_json(out / REPORT_FILES["json"]),
            "csv": self.to_csv(out / REPORT_FILES["csv"]),
            "plot": plot_accuracy_vs_eps(self.fgsm_sweep, out / REPORT_FILES["plot"], pgd, autoattack=aa, title=title),
            "markdown": atomic_write_text(out / REPORT_FILES["markdown"], self.to_markdown() + "\n"),
        }
        return {key: paths[key] for key in REPORT_FILES}


def worst_case_label(worst_case: dict[str, Any]) -> str:
    """``"Worst case over 7 attacks, per sample (200 of 360 samples)"``, the headline's label."""
    n_attacks = len(worst_case.get("attacks", []))
    common, total = worst_case.get("n_samples", "?"), worst_case.get("n_evaluated", "?")
    samples = f"all {total} samples" if common == total else f"{common} of {total} samples, those every attack saw"
    return f"Worst case over {n_attacks} attacks, per sample ({samples})"


def metric_label(name: str) -> str:
    """A human label for a key of :attr:`EvaluationReport.other_metrics` (the key itself if unknown).

    ``pgd_accuracy_eps_<e>`` becomes ``"PGD accuracy at eps=<e> (masking check d)"``.
    """
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    prefix = "pgd_accuracy_eps_"
    if name.startswith(prefix):
        return f"PGD accuracy at eps={name[len(prefix):]} (masking check d)"
    return name


def masking_summary(masking: dict[str, Any] | None, warnings: list[str]) -> list[str]:
    """Lines saying which gradient-masking checks ran, which were skipped and why, and the verdict."""
    if masking is None:
        return ["Not run (no gradient-masking check was made)."]
    run, skipped = list(masking.get("run", [])), dict(masking.get("skipped", {}))
    if not run:
        verdict = "None of the checks could run."
    elif any(w.startswith(MASKING_PREFIX) for w in warnings):
        verdict = "Symptoms found: see the warnings above."
    else:
        verdict = "No gradient-masking symptom was detected by the checks that were run."
    lines = [verdict]
    lines += [f"- ran: {label}" for label in run]
    lines += [f"- skipped: {label}: {reason}" for label, reason in skipped.items()]
    return lines


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items() if v is not None)
