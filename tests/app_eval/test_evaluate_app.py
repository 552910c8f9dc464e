"""``lsa-evaluate``: the report files of a tiny run, the R&G score, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evaltest_utils import FAST_EVAL, compose_app, last_line, run_module

from lsa_train.app.errors import ConfigError
from lsa_train.app.evaluate import evaluate
from lsa_train.evaluation import REPORT_FILES

MODULE = "lsa_train.app.evaluate"


def test_evaluate_in_process_writes_report(
    train_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps table cells to the terminal width
    ckpt = train_run / "checkpoints" / "last.ckpt"
    cfg = compose_app("evaluate", [f"ckpt_path={ckpt}", *FAST_EVAL], tmp_path / "eval")
    report = evaluate(cfg)
    printed = capsys.readouterr().out
    assert set(report.other_metrics) == {"square_accuracy", "pgd_accuracy_on_square_samples", "pgd_accuracy_eps_1"}
    for key in report.other_metrics:  # printed under their labels, not as raw keys
        assert key not in printed
    assert "Square Attack" in printed and "masking check d" in printed
    assert "gradient-masking checks:" in printed and report.masking is not None
    for name in REPORT_FILES.values():
        assert (tmp_path / "eval" / name).is_file(), name
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    sweep = metrics["fgsm_sweep"]
    assert [r["eps"] for r in sweep] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert metrics["rg_score"] == pytest.approx(100 * sum(r["accuracy"] for r in sweep))
    assert metrics["pgd_settings"]["eps"] == pytest.approx(0.1)  # the training attack's eps
    assert metrics["pgd_settings"]["steps"] == 5 and metrics["n_samples"] == 64
    assert metrics["autoattack_accuracy"] is not None and metrics["autoattack_settings"]["n_samples"] == 16
    assert metrics["metadata"]["weights_only_load"] is True
    assert report.clean_accuracy == pytest.approx(metrics["clean_accuracy"])
    assert "R&G score" in (tmp_path / "eval" / "report.md").read_text()


def test_evaluate_cli_defaults_to_run_eval_dir(train_run: Path, tmp_path: Path) -> None:
    ckpt = train_run / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", *FAST_EVAL, "autoattack.enabled=false", "masking.enabled=false",
            "data.eval_batch_size=32"]
    proc = run_module(MODULE, args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out_dirs = sorted((train_run / "eval").iterdir())
    assert out_dirs, "the evaluation goes into <train run>/eval/<timestamp>"
    metrics = json.loads((out_dirs[-1] / "metrics.json").read_text())
    assert metrics["autoattack_accuracy"] is None and "R&G score" in proc.stdout
    assert "gradient-masking checks: Not run" in proc.stdout
    assert "no gradient-masking symptom" not in proc.stdout.lower()
    assert "Not run" in (out_dirs[-1] / "report.md").read_text()


def _corrupt_run(train_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "corrupt_run"
    shutil.copytree(train_run / ".hydra", run / ".hydra")
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
    return ckpt


@pytest.mark.parametrize("case", ["missing", "corrupt", "no_config"])
def test_bad_ckpt_path_is_one_line_error(case: str, train_run: Path, tmp_path: Path) -> None:
    if case == "missing":
        ckpt, expected = tmp_path / "nope" / "last.ckpt", "does not exist"
    elif case == "corrupt":
        ckpt, expected = _corrupt_run(train_run, tmp_path), "corrupt"
    else:
        ckpt = tmp_path / "loose.ckpt"
        shutil.copy(train_run / "checkpoints" / "last.ckpt", ckpt)
        expected = ".hydra/config.yaml"
    proc = run_module(MODULE, [f"ckpt_path={ckpt}"], cwd=tmp_path)
    assert proc.returncode == 2
    line = last_line(proc.stderr)
    assert line.startswith("lsa-evaluate: error:") and str(ckpt) in line and expected in line, line
    assert "Traceback" not in proc.stderr


def test_bad_value_is_config_error(train_run: Path, tmp_path: Path) -> None:
    ckpt = train_run / "checkpoints" / "last.ckpt"
    cfg = compose_app("evaluate", [f"ckpt_path={ckpt}", "pgd.steps=0"], tmp_path / "eval")
    with pytest.raises(ConfigError, match=r"pgd\.steps=0"):
        evaluate(cfg)
