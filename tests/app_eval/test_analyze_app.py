"""``lsa-analyze``: six per-layer curves, their files, and a one-line error for a bad checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from evaltest_utils import compose_app, last_line, run_module
from omegaconf import OmegaConf

from lsa_train.analysis import PAPER_PERTURBATIONS
from lsa_train.app.analyze import ANALYSIS_FILES, analyze_run
from lsa_train.app.errors import ConfigError


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


def test_analyze_of_a_normal_run_asks_for_eps(train_run: Path, tmp_path: Path) -> None:
    # a run trained with attack=none has eps 0: analysing at it gave an empty MVL without a word
    run_cfg = OmegaConf.load(train_run / ".hydra" / "config.yaml")
    run_cfg.attack.eps = 0.0
    config_path = tmp_path / "normal_run.yaml"
    OmegaConf.save(run_cfg, config_path)
    ckpt = train_run / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", f"run_config={config_path}", "num_samples=8", "torch_threads=1"]
    with pytest.raises(ConfigError, match=r"attack\.eps=0.*set eps=<budget>, e\.g\. eps=0\.1"):
        analyze_run(compose_app("analyze", args, tmp_path / "refused"))
    outcome = analyze_run(compose_app("analyze", [*args, "eps=0.1", "perturbations=[pgd]"], tmp_path / "ok"))
    assert outcome["eps"] == 0.1 and float(outcome["results"]["pgd"].probe_means.max()) > 0
