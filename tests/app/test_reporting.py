"""One-line error rendering, run reports and the multirun summary (no training)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from lsa_train.app import cli
from lsa_train.app.errors import ConfigError, config_section, one_line
from lsa_train.app.report import build_summary, print_summary, write_metrics_json, write_report_md
from lsa_train.app.schemas import PGDConf
from lsa_train.app.sweep_summary import SweepSummaryCallback, collect_jobs


def test_one_line_for_a_missing_group_option() -> None:
    err = MissingConfigException(
        "In 'train': Could not find 'model/foo'\n\nAvailable options in 'model':\n\tcnn_b\n\tmlp_a\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n",
        missing_cfg_file="model/foo",
    )
    assert one_line(err) == "In 'train': Could not find 'model/foo'; Available options in 'model': cnn_b, mlp_a"


def test_one_line_for_a_typo_lists_the_schema_keys() -> None:
    try:
        OmegaConf.structured(PGDConf).epss = 0.1
    except OmegaConfBaseException as cause:
        err = ConfigCompositionException("Could not override 'attack.epss'.\nTo append use +attack.epss=0.1")
        err.__cause__ = cause
    line = one_line(err)
    assert "\n" not in line and "attack.epss" in line and "valid keys: eps, base_loss" in line


def test_config_section_wraps_value_errors() -> None:
    with pytest.raises(ConfigError, match=r"^attack=pgd: eps must be >= 0; got -1$"), config_section("attack=pgd"):
        raise ValueError("eps must be >= 0\ngot -1")


def test_report_files(tmp_path: Path) -> None:
    metrics = {"test/acc_clean": 0.9, "test/acc_pgd": 0.5, "test/acc_fgsm_0": 0.9, "test/acc_fgsm_0.1": 0.6,
               "test/rg_score": 150.0}
    summary = build_summary(metrics=metrics, eps_grid=[0.0, 0.1], run_dir=tmp_path,
                            info={"mvl": ["relu1"], "eval_eps": 0.1, "test_pgd_steps": 20, "wall_time_s": 1.0,
                                  "mvl_history": [{"epoch": 0, "step": 0, "mvl": ["relu1"]}], "bad": float("nan")})
    write_metrics_json(tmp_path, summary)
    report = write_report_md(tmp_path, summary).read_text()
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["fgsm"] == {"0": 0.9, "0.1": 0.6} and loaded["bad"] is None and loaded["rg_score"] == 150.0
    assert "| PGD-20 accuracy at eps=0.1 (%) | 50.00 |" in report and "| R&G score" in report and "relu1" in report


def test_summary_prints_long_paths_whole_and_states_the_lsa_term_usage(tmp_path: Path) -> None:
    run_dir = tmp_path / ("a_run_folder_name_long_enough_to_pass_the_width_of_the_terminal_" * 2)
    last = run_dir / "checkpoints" / "last.ckpt"
    usage = {"configured": True, "active_steps": 5, "training_steps": 8, "active_fraction": 0.625}
    summary = build_summary(metrics={}, eps_grid=[], run_dir=run_dir,
                            info={"tested_checkpoint": str(run_dir / "checkpoints" / "epoch_003.ckpt"),
                                  "last_checkpoint": str(last), "lsa_term": usage})
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=80))
    printed = out.getvalue()
    assert f"last checkpoint: {last}\n" in printed and f"run dir: {run_dir}\n" in printed
    assert f"tested checkpoint: {run_dir / 'checkpoints' / 'epoch_003.ckpt'}\n" in printed
    assert "62.5% of 8 steps (MVL empty on 3)" in printed
    run_dir.mkdir()
    report = write_report_md(run_dir, summary).read_text()
    assert f"| last checkpoint | `{last}` |" in report
    assert "| LSA term active (training steps) | 62.5% of 8 steps (MVL empty on 3) |" in report
    summary["lsa_term"] = {"configured": False, "active_steps": 0, "training_steps": 8, "active_fraction": 0.0}
    assert "| LSA term active (training steps) | off by configuration (lambda 0) |" in write_report_md(
        run_dir, summary).read_text()


def test_report_links_the_mvl_history(tmp_path: Path) -> None:
    (tmp_path / "lsa").mkdir()
    files = {"figure": str(tmp_path / "lsa" / "mvl_history.png"), "csv": str(tmp_path / "lsa" / "mvl_history.csv")}
    summary = build_summary(metrics={}, eps_grid=[], run_dir=tmp_path,
                            info={"mvl_history": [{"epoch": 0, "step": 0, "mvl": ["relu1"]}],
                                  "mvl_history_files": files})
    report = write_report_md(tmp_path, summary).read_text()
    assert "![MVL over the run](lsa/mvl_history.png)" in report
    assert "[mvl_history.csv](lsa/mvl_history.csv)" in report
    summary["mvl_history_files"] = {}
    assert "mvl_history" not in write_report_md(tmp_path, summary).read_text()


def _fake_job(sweep: Path, num: int, overrides: list[str], summary: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (job / "metrics.json").write_text(json.dumps(summary))


def test_sweep_summary_lists_failed_jobs_and_keeps_the_others(tmp_path: Path, monkeypatch) -> None:
    sweep = tmp_path / "sweep"
    ok = {"status": "completed", "acc_pgd": 0.5, "metrics": {"test/acc_pgd": 0.5}, "mvl": ["relu1"]}
    _fake_job(sweep, 0, ["trainer=debug", "seed=1"], ok)
    _fake_job(sweep, 1, ["trainer=debug", "seed=2"], {"status": "failed", "error": "attack.eps=-1 is invalid"})
    _fake_job(sweep, 10, ["trainer=debug", "seed=3"], None)  # crashed before writing metrics.json
    rows = collect_jobs(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "10"]
    assert [r["overrides"] for r in rows] == ["seed=1", "seed=2", "seed=3"]  # only what varies
    assert [r["status"] for r in rows] == ["completed", "failed", "failed"]

    reported: list[str] = []
    monkeypatch.setattr("lsa_train.app.sweep_summary.report_sweep_failure", reported.append)
    SweepSummaryCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    table = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert table[0]["test/acc_pgd"] == "0.5" and table[0]["mvl"] == "relu1"
    assert table[1]["error"] == "attack.eps=-1 is invalid" and "no metrics.json" in table[2]["error"]
    assert len(reported) == 1 and reported[0].startswith("2 of 3 sweep jobs failed")


def test_run_cli_exit_codes(capsys) -> None:
    def bad_config() -> None:
        raise ConfigError("attack.eps=-1 is invalid")

    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(bad_config, prog="lsa-train")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "lsa-train: error: attack.eps=-1 is invalid\n"

    def failed_sweep() -> None:
        cli.report_sweep_failure("1 of 2 sweep jobs failed")

    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(failed_sweep, prog="lsa-train")
    assert exit_info.value.code == 1

    def crash() -> None:
        cli.mark_task_started()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):  # not a config error: the traceback is kept
        cli.run_cli(crash, prog="lsa-train")
