"""The app as a user runs it: ``python -m lsa_train`` / ``lsa-train`` in subprocesses."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from apptest_utils import run_app
from omegaconf import OmegaConf

#: Keeps subprocess runs short: a few batches per epoch, small analysis subset, one test batch.
QUICK = [
    "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    "regularizer.mvl.num_samples=64", "trainer.num_sanity_val_steps=0",
]
TINY = ["trainer=debug", "regularizer.mvl.num_samples=32"]


@pytest.mark.slow
def test_short_real_run_writes_the_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_app([*QUICK, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("LSA training summary", "clean accuracy", "PGD-20 accuracy", "FGSM accuracy at eps=0.3",
                 "R&G score", "final MVL", "run dir"):
        assert name in result.stdout, name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("epoch_*.ckpt"))) == 1  # the best epoch
    assert list((run_dir / "csv").rglob("metrics.csv"))
    assert list((run_dir / "lsa").glob("*.png"))
    assert "R&G score" in (run_dir / "report.md").read_text()
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["setting"]["tags"] == ["dev"]  # the config's tags are kept with the results
    assert [entry["epoch"] for entry in summary["mvl_history"]] == [0, 1]  # the run's, not the tested checkpoint's
    fgsm = summary["fgsm"]
    assert list(fgsm) == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]
    assert summary["rg_score"] == pytest.approx(100 * sum(fgsm.values()), rel=1e-5)
    assert summary["acc_clean"] == pytest.approx(fgsm["0"])
    assert 0.0 <= summary["acc_pgd"] <= summary["acc_clean"] and isinstance(summary["mvl"], list)
    assert summary["acc_clean"] > 0.3  # 8 steps of PGD-AT on 10 digit classes: well above chance (0.1)
    assert summary["tested_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")  # what lsa-evaluate reads
    assert summary["weights"].startswith("last (after 2 epochs, step ") and "weights" in result.stdout
    assert summary["run_dir"] == str(run_dir)


def test_console_script_help(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("lsa-train")
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    result = run_app(["--help"], cwd=tmp_path, command=[str(script)])
    assert result.returncode == 0, result.stderr
    assert "lsa-train" in result.stdout
    for group in ("attack: apgd, fgsm, fgsm_rs, mart, none, pgd, pgd_l2, trades", "regularizer: lsa, none",
                  "experiment: ", "data: "):
        assert group in result.stdout


@pytest.mark.slow
def test_multirun_two_jobs_and_sweep_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(["-m", *TINY, "regularizer.lambda=0,0.1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / ".hydra" / "config.yaml").is_file()
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [row["job"] for row in rows] == ["0", "1"]
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert rows[0]["overrides"] == "regularizer.lambda=0" and rows[1]["overrides"] == "regularizer.lambda=0.1"
    for row in rows:
        assert 0.0 <= float(row["test/acc_pgd"]) <= float(row["test/acc_clean"])
        assert float(row["test/rg_score"]) >= 100 * float(row["test/acc_clean"])  # eps 0 term + the others


@pytest.mark.slow
def test_multirun_with_a_failing_job_still_summarizes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(["-m", *TINY, "attack.eps=0.1,-0.1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 1
    assert "1 of 2 sweep jobs failed" in result.last_stderr_line and "attack.eps=-0.1" in result.last_stderr_line
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [row["status"] for row in rows] == ["completed", "failed"]
    assert "attack.eps=-0.1" in rows[1]["error"] and rows[0]["test/acc_pgd"]
    assert not (sweep / "1" / "checkpoints").exists()


@pytest.mark.slow
def test_trades_with_awp_short_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_app(["attack=trades", "awp.gamma=5e-3", *QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["awp"] == {"gamma": 5e-3, "warmup": 0}
    assert saved["hyper_parameters"]["base_loss"] == "trades"


@pytest.mark.slow
def test_multirun_mart_with_and_without_awp(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(["-m", "attack=mart", "awp.gamma=0,5e-3", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert [row["overrides"] for row in rows] == ["awp.gamma=0", "awp.gamma=0.005"]  # the swept key
    for job, gamma in (("0", 0.0), ("1", 5e-3)):
        config = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert config.attack._target_ == "lsa_train.attacks.MARTAttack" and config.attack.base_loss == "mart"
        assert config.awp.gamma == gamma and config.module.awp.gamma == gamma  # module.awp is ${awp}
