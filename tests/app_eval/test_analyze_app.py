"""``lsa-analyze``: six per-layer curves, their files, and a one-line error for a bad checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from evaltest_utils import compose_app, last_line, run_module

from lsa_train.analysis import PAPER_PERTURBATIONS
from lsa_train.app.analyze import ANALYSIS_FILES, analyze_run


def test_analyze_writes_six_curves(train_run: Path, tmp_path: Path) -> None:
    ckpt = train_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "analysis"
    cfg = compose_app("analyze", [f"ckpt_path={ckpt}", "num_samples=48", "torch_threads=1"], out)
    outcome = analyze_run(cfg)
    assert list(outcome["results"]) == list(PAPER_PERTURBATIONS)
    assert outcome["eps"] == 0.1  # the training eps
    for name in ANALYSIS_FILES.values():
        assert (out / name).is_file(), name
    for name in PAPER_PERTURBATIONS:
        assert (out / f"lsa_{name}.csv").is_file()
    rows = list(csv.DictReader((out / "lsa_layers.csv").open()))
    assert {r["perturbation"] for r in rows} == set(PAPER_PERTURBATIONS)
    payload = json.loads((out / "lsa_results.json").read_text())
    assert len(payload["results"]) == 6 and payload["settings"]["num_samples"] == 48
    text = (out / "analysis.md").read_text()
    assert "MVL per perturbation" in text and all(f"## {name}" in text for name in PAPER_PERTURBATIONS)


def test_analyze_cli_missing_ckpt(tmp_path: Path) -> None:
    ckpt = tmp_path / "missing.ckpt"
    proc = run_module("lsa_train.app.analyze", [f"ckpt_path={ckpt}"], cwd=tmp_path)
    assert proc.returncode == 2
    line = last_line(proc.stderr)
    assert line.startswith("lsa-analyze: error:") and str(ckpt) in line and "does not exist" in line, line


def test_default_analysis_budget_of_an_l2_run_is_its_linf_eval_eps() -> None:
    from omegaconf import OmegaConf

    from lsa_train.app.analyze import linf_training_eps

    l2_run = OmegaConf.create({"attack": {"eps": 0.5, "norm": "l2", "eval_eps": 0.1}})
    assert linf_training_eps(l2_run) == 0.1  # fgsm/pgd perturbations are Linf: not at the L2 radius 0.5
    linf_run = OmegaConf.create({"attack": {"eps": 0.2, "norm": "linf", "eval_eps": 0.3}})
    assert linf_training_eps(linf_run) == 0.2
