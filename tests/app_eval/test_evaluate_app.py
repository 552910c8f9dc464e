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


def _run_trained_at(train_run: Path, tmp_path: Path, eps: float) -> Path:
    """A copy of ``train_run`` whose config says it was trained at ``eps`` (signed as the user's own)."""
    from omegaconf import OmegaConf

    from lsa_train.signing import sign_run

    run = tmp_path / f"run_eps_{eps:g}"
    shutil.copytree(train_run / ".hydra", run / ".hydra")
    shutil.copytree(train_run / "checkpoints", run / "checkpoints")
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    config.attack.eps = eps  # eval_eps stays ${.eps}
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    sign_run(run)
    return run / "checkpoints" / "last.ckpt"


def test_fgsm_grid_and_masking_follow_the_training_eps(train_run: Path, tmp_path: Path) -> None:
    quick = ["max_samples=32", "pgd.steps=5", "autoattack.enabled=false", "masking.square_queries=null",
             "masking.large_eps=null", "torch_threads=1"]
    for eps, grid in ((0.1, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]), (0.15, [0.0, 0.15, 0.3, 0.45, 0.6, 0.75])):
        ckpt = train_run / "checkpoints" / "last.ckpt" if eps == 0.1 else _run_trained_at(train_run, tmp_path, eps)
        report = evaluate(compose_app("evaluate", [f"ckpt_path={ckpt}", *quick], tmp_path / f"eval_{eps:g}"))
        assert list(report.fgsm_sweep) == pytest.approx(grid)
        assert report.pgd_settings["eps"] == pytest.approx(eps)
        assert report.metadata["fgsm_eps_grid"].startswith(f"auto: 0..5 x eps {eps:g} (the run's training eps)")
        assert "(a) PGD no weaker than FGSM" in report.masking["run"]  # compared at the training eps
        assert report.metadata["masking_checks"]["eps"] == pytest.approx(eps)
        assert f"| {eps:g} |" in (tmp_path / f"eval_{eps:g}" / "report.md").read_text()
    # pgd.eps off the grid joins it (check (a) reads FGSM at that radius from the sweep); a given grid is kept
    ckpt = train_run / "checkpoints" / "last.ckpt"
    report = evaluate(compose_app("evaluate", [f"ckpt_path={ckpt}", *quick, "pgd.eps=0.05"], tmp_path / "off"))
    assert list(report.fgsm_sweep) == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    note = report.metadata["fgsm_eps_grid"]
    assert note.startswith("auto: 0..5 x eps 0.1 (the run's training eps), plus pgd.eps=0.05")
    given = compose_app("evaluate", [f"ckpt_path={ckpt}", *quick, "fgsm.eps_grid=[0,0.3]"], tmp_path / "given")
    report = evaluate(given)
    assert list(report.fgsm_sweep) == pytest.approx([0.0, 0.3])
    assert report.metadata["fgsm_eps_grid"] == "given (fgsm.eps_grid): 0, 0.3"


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
    for grid in ("wide", "[]", "[0,-0.1]"):
        cfg = compose_app("evaluate", [f"ckpt_path={ckpt}", f"fgsm.eps_grid={grid}"], tmp_path / "eval")
        with pytest.raises(ConfigError, match=r"fgsm\.eps_grid=.* must be auto .* or a non-empty list"):
            evaluate(cfg)
