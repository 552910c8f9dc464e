"""EvaluationReport files (Markdown, JSON, CSV, PNG) and the end-to-end evaluate_robustness."""

from __future__ import annotations

import csv
import json

import pytest

from lsa_train.evaluation import REPORT_FILES, EvaluationReport, evaluate_robustness, plot_accuracy_vs_eps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report(**overrides) -> EvaluationReport:
    fields = {
        "clean_accuracy": 0.9882,
        "fgsm_sweep": {0.0: 0.9882, 0.1: 0.821, 0.2: 0.472, 0.3: 0.1787, 0.4: 0.0696, 0.5: 0.0425},
        "pgd_accuracy": 0.05,
        "pgd_settings": {"eps": 0.3, "alpha": None, "steps": 20, "restarts": 1, "norm": "linf", "seed": 0},
        "autoattack_accuracy": 0.01,
        "autoattack_settings": {"eps": 0.3, "norm": "Linf", "version": "standard", "per_attack": {"apgd-ce": 0.02}},
        "warnings": ["Possible gradient masking: Square (black-box) accuracy 1% is lower than PGD accuracy 5%."],
        "model_name": "cnn_mnist",
        "checkpoint": "runs/x/last.ckpt",
        "n_samples": 10000,
        "other_metrics": {"square_accuracy": 0.01},
        "metadata": {"dataset": "mnist"},
    }
    fields.update(overrides)
    return EvaluationReport(**fields)


def test_write_all_produces_every_file(tmp_path):
    report = _report()
    paths = report.write_all(tmp_path / "eval")
    assert set(paths) == set(REPORT_FILES)
    for key, name in REPORT_FILES.items():
        assert paths[key] == tmp_path / "eval" / name and paths[key].stat().st_size > 0
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(REPORT_FILES.values())  # no temp files


def test_json_round_trip(tmp_path):
    report = _report()
    path = report.to_json(tmp_path / "metrics.json")
    data = json.loads(path.read_text())
    assert data["rg_score"] == pytest.approx(257.2)
    assert data["schema_version"] == 2
    assert EvaluationReport.from_json(path) == report


def test_markdown_shows_rg_score_and_warnings():
    text = _report().to_markdown()
    assert "257.20" in text
    assert "Possible gradient masking: Square" in text
    assert text.index("Warnings") < text.index("Summary")  # warnings come first
    assert "cnn_mnist" in text and "runs/x/last.ckpt" in text and "apgd-ce" in text
    ran = {"run": ["(a) PGD no weaker than FGSM"],
           "skipped": {"(d) PGD at a huge eps reaches about 0": "large_eps=None"}}
    quiet = _report(warnings=[], masking=ran).to_markdown()
    assert "Warnings" not in quiet and "No gradient-masking symptom" in quiet
    assert "- ran: (a) PGD no weaker than FGSM" in quiet and "- skipped: (d) PGD at a huge eps" in quiet


def test_markdown_says_not_run_without_masking_checks(moons):
    # before: "No gradient-masking symptom was detected" although no check ran
    report = evaluate_robustness(moons.model, moons.batches(), 0.2, eps_grid=(0.0, 0.2), pgd_steps=2,
                                 masking_checks=False)
    assert report.masking is None
    text = report.to_markdown()
    assert "Not run" in text and "No gradient-masking symptom" not in text
    assert _report(warnings=[]).to_markdown().count("Not run") == 1  # masking=None: not run


def test_other_metrics_have_human_labels():
    text = _report(other_metrics={"square_accuracy": 0.01, "pgd_accuracy_eps_1": 0.0}).to_markdown()
    assert "| Square Attack (black-box) accuracy (masking check c) | 1.00% |" in text
    assert "| PGD accuracy at eps=1 (masking check d) | 0.00% |" in text
    assert "square_accuracy" not in text and "pgd_accuracy_eps_1" not in text


def test_csv_has_one_row_per_metric(tmp_path):
    report = _report()
    rows = list(csv.DictReader((report.to_csv(tmp_path / "m.csv")).open()))
    metrics = [r["metric"] for r in rows]
    assert metrics.count("fgsm_accuracy") == 6
    for name in ("clean_accuracy", "rg_score", "pgd_accuracy", "autoattack_accuracy", "square_accuracy"):
        assert metrics.count(name) == 1
    rg = next(r for r in rows if r["metric"] == "rg_score")
    assert float(rg["value"]) == pytest.approx(257.2) and rg["unit"] == "percent"


def test_optional_parts_may_be_missing(tmp_path):
    report = EvaluationReport(clean_accuracy=0.9, fgsm_sweep={0.1: 0.5})
    assert report.rg_score is None  # no eps 0 in the grid
    paths = report.write_all(tmp_path)
    assert EvaluationReport.from_json(paths["json"]) == report
    assert "R&G" not in paths["markdown"].read_text()


def test_plot_overwrites_atomically(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    plot_accuracy_vs_eps({0.0: 0.9, 0.1: 0.5}, path, pgd={0.1: 0.4}, autoattack={0.1: 0.35})
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_evaluate_robustness_end_to_end(masked_moons, moons, tmp_path):
    pytest.importorskip("pyautoattack", reason="AutoAttack evaluation needs pyautoattack")
    options = {
        "autoattack_version": "custom",
        "autoattack_attacks": ["apgd-ce"],
        "autoattack_samples": 50,
        "masking_kwargs": {"square_queries": 300, "square_max_samples": 100},
    }
    normal = evaluate_robustness(moons.model, moons.batches(), 0.2, model_name="moons", **options)
    assert normal.warnings == []
    assert normal.masking is not None and len(normal.masking["run"]) == 5 and normal.masking["skipped"] == {}
    assert normal.n_samples == 200 and normal.fgsm_sweep[0.0] == normal.clean_accuracy
    assert normal.autoattack_accuracy is not None and normal.autoattack_settings["n_samples"] == 50

    masked = evaluate_robustness(masked_moons.model, masked_moons.batches(), 0.2, model_name="masked", **options)
    assert masked.warnings
    paths = masked.write_all(tmp_path)
    text = paths["markdown"].read_text()
    assert f"{masked.rg_score:.2f}" in text and "Possible gradient masking" in text
    assert EvaluationReport.from_json(paths["json"]) == masked


def _worst_case_report() -> EvaluationReport:
    import torch

    from lsa_train.evaluation import AttackOutcome, worst_case

    clean = torch.tensor([True, True, True, True, False, True])
    pgd = AttackOutcome("pgd", torch.tensor([True, True, False, True, False, True]), torch.arange(6), {"eps": 0.3})
    aa = AttackOutcome("autoattack", torch.tensor([True, False, False, True]), torch.arange(4), {"eps": 0.3},
                       accuracy=0.5)
    case = worst_case(clean, [pgd, aa])
    attacks = {o.name: {"accuracy": o.own_accuracy, "n_samples": o.n_samples, "seconds": 1.5,
                        "accuracy_on_common": case.accuracy_on_common[o.name], "settings": dict(o.settings)}
               for o in (pgd, aa)}
    return _report(worst_case_accuracy=case.accuracy, attacks=attacks, worst_case=case.to_dict(),
                   skipped_attacks={"transfer": "no transfer_from given"})


def test_worst_case_heads_the_summary_and_lists_every_attack(tmp_path):
    report = _worst_case_report()
    assert report.worst_case_accuracy == pytest.approx(0.5)  # samples 0 and 3 of the 4 both attacks saw
    text = report.to_markdown()
    headline = "| **Worst case over 2 attacks, per sample (4 of 6 samples, those every attack saw)** | **50.00%** |"
    assert headline in text and text.index(headline) < text.index("| PGD accuracy (")
    assert "| pgd | 66.67% | 6 | 75.00% | 1 | 0 | 1.5 | `eps=0.3` |" in text
    assert "| autoattack | 50.00% | 4 | 50.00% | 1 | 1 | 1.5 | `eps=0.3` |" in text
    assert "the worst case is computed on the 4 samples every attack saw" in text
    assert "First broken by (in run order): pgd 1, autoattack 1." in text
    assert "- Not run: transfer: no transfer_from given" in text
    rows = list(csv.DictReader(report.to_csv(tmp_path / "m.csv").open()))
    assert [float(r["value"]) for r in rows if r["metric"] == "worst_case_accuracy"] == [0.5]
    assert [r["attack"] for r in rows if r["metric"] == "attack_accuracy"] == ["pgd", "autoattack"]
    path = report.to_json(tmp_path / "metrics.json")
    assert json.loads(path.read_text())["worst_case_accuracy"] == 0.5
    assert EvaluationReport.from_json(path) == report
