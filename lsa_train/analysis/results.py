"""The result of one layer sustainability analysis, with exports."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lsa_train.analysis.mvl import mvl_statistics
from lsa_train.utils.io import atomic_write_text


@dataclass
class LSAResult:
    """Per-probe comparison measures of clean vs perturbed inputs, and the MVL.

    Attributes:
        probe_names: Probe names in forward order, length ``L``.
        cm: Comparison measure per sample and probe, float32 on CPU, shape ``(M, L)``.
        mvl: Indices of the Most Vulnerable Layers (sorted).
        measure: Name of the comparison measure (e.g. ``"relative_error"``).
        perturbation: Name of the perturbation that produced the perturbed inputs, if known.
        eta: Algorithm 1 cut-off used for ``mvl`` (``None`` when top-k or explicit).
        top_k: ``k`` used for ``mvl`` (``None`` when Algorithm 1 or explicit).
        metadata: Free-form extra facts (eps, model name, ...), kept in exports.
    """

    probe_names: list[str]
    cm: torch.Tensor
    mvl: list[int]
    measure: str = "relative_error"
    perturbation: str | None = None
    eta: float | None = None
    top_k: int | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cm = self.cm.detach().float().cpu()
        if self.cm.ndim != 2 or self.cm.shape[1] != len(self.probe_names):
            raise ValueError(
                f"cm shape {tuple(self.cm.shape)} does not match {len(self.probe_names)} probe names"
            )

    # -- statistics ---------------------------------------------------------------------
    @property
    def probe_means(self) -> torch.Tensor:
        """Mean CM per probe over samples, shape ``(L,)``."""
        return mvl_statistics(self.cm)[0].float()

    @property
    def probe_stds(self) -> torch.Tensor:
        """Population std of CM per probe over samples, shape ``(L,)``."""
        return self.cm.double().std(dim=0, unbiased=False).float()

    @property
    def mu(self) -> float:
        """Mean of all ``M x L`` CM values."""
        return mvl_statistics(self.cm)[1]

    @property
    def sigma(self) -> float:
        """Population std of all ``M x L`` CM values."""
        return mvl_statistics(self.cm)[2]

    @property
    def mvl_names(self) -> list[str]:
        return [self.probe_names[i] for i in self.mvl]

    @property
    def num_samples(self) -> int:
        return int(self.cm.shape[0])

    # -- exports -------------------------------------------------------------------------
    def rows(self) -> list[dict[str, object]]:
        """One dict per probe: index, probe, mean, std, mvl."""
        means, stds = self.probe_means.tolist(), self.probe_stds.tolist()
        mvl = set(self.mvl)
        return [
            {"index": i, "probe": name, "mean": means[i], "std": stds[i], "mvl": i in mvl}
            for i, name in enumerate(self.probe_names)
        ]

    def _header(self) -> str:
        rule = f"eta={self.eta}" if self.eta is not None else f"top_k={self.top_k}"
        source = f"{self.perturbation}, " if self.perturbation else ""
        return (
            f"LSA ({source}{self.measure}, {self.num_samples} samples): "
            f"mu={self.mu:.4g} sigma={self.sigma:.4g} {rule} MVL={self.mvl_names}"
        )

    def to_table(self) -> str:
        """A plain-text table, one line per probe; ``*`` marks the MVL."""
        rows = self.rows()
        width = max(len("probe"), *(len(str(r["probe"])) for r in rows))
        lines = [self._header(), f"{'idx':>4}  {'probe':<{width}}  {'mean':>10}  {'std':>10}  mvl"]
        for r in rows:
            mark = "*" if r["mvl"] else ""
            lines.append(f"{r['index']:>4}  {r['probe']:<{width}}  {r['mean']:>10.4g}  {r['std']:>10.4g}  {mark}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"_{self._header()}_", "", "| idx | probe | mean CM | std | MVL |", "|---:|---|---:|---:|:---:|"]
        for r in self.rows():
            lines.append(
                f"| {r['index']} | `{r['probe']}` | {r['mean']:.4g} | {r['std']:.4g} | {'yes' if r['mvl'] else ''} |"
            )
        return "\n".join(lines)

    def to_csv(self, path: str | Path | None = None) -> str:
        """Per-probe summary as CSV; written to ``path`` when given. Returns the text."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["index", "probe", "mean", "std", "mvl"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "probe_names": self.probe_names,
            "cm": self.cm.tolist(),
            "mvl": self.mvl,
            "mvl_names": self.mvl_names,
            "measure": self.measure,
            "perturbation": self.perturbation,
            "eta": self.eta,
            "top_k": self.top_k,
            "mu": self.mu,
            "sigma": self.sigma,
            "probe_means": self.probe_means.tolist(),
            "metadata": self.metadata,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Everything, the full CM matrix included, as JSON; written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LSAResult:
        return cls(
            probe_names=list(data["probe_names"]),  # type: ignore[arg-type]
            cm=torch.tensor(data["cm"], dtype=torch.float32),
            mvl=[int(i) for i in data["mvl"]],  # type: ignore[union-attr]
            measure=str(data.get("measure", "relative_error")),
            perturbation=data.get("perturbation"),  # type: ignore[arg-type]
            eta=data.get("eta"),  # type: ignore[arg-type]
            top_k=data.get("top_k"),  # type: ignore[arg-type]
            metadata=dict(data.get("metadata") or {}),  # type: ignore[arg-type]
        )

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> LSAResult:
        """Loads a result written by :meth:`to_json` (a path or the JSON text)."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

