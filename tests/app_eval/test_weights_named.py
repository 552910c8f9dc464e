"""evaluate/analyze say where the weights came from (issue 20, item 13): the file and the tensors loaded, or that
the network is randomly initialized (a warning of the report, not only a log line)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from evaltest_utils import FAST_EVAL, compose_app

from lsa_train.app.evaluate import evaluate
from lsa_train.data import DigitsDataModule
from lsa_train.models import create_model

QUICK = [*FAST_EVAL, "autoattack.enabled=false", "masking.enabled=false", "fgsm.eps_grid=[0.0,0.1]"]


def test_evaluate_names_the_weights_file_and_the_tensors_loaded(tmp_path: Path) -> None:
    net = create_model("cnn_b", **DigitsDataModule().model_kwargs())
    torch.save(net.state_dict(), tmp_path / "cnn.pt")
    cfg = compose_app("evaluate", ["model=cnn_b", "data=digits", f"model.checkpoint={tmp_path / 'cnn.pt'}",
                                   "pgd.eps=0.1", *QUICK], tmp_path / "with")
    report = evaluate(cfg)
    weights = json.loads((tmp_path / "with" / "metrics.json").read_text())["metadata"]["weights"]
    total = len(net.state_dict())  # 5 layers' weights and biases, and the normalization's mean and std
    assert total == 12 and weights == f"'{tmp_path / 'cnn.pt'}': 12 of 12 tensors loaded"
    assert not any("randomly initialized" in w for w in report.warnings)


def test_evaluate_of_a_network_without_weights_warns_in_the_report(tmp_path: Path) -> None:
    cfg = compose_app("evaluate", ["model=cnn_b", "data=digits", "pgd.eps=0.1", *QUICK], tmp_path / "none")
    report = evaluate(cfg)
    assert any("has no weights" in w and "randomly initialized" in w for w in report.warnings)
    assert "randomly initialized" in (tmp_path / "none" / "report.md").read_text()
