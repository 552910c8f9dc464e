"""``lsa-evaluate adaptive=true``: the attacks that know the defense, the worst case per sample, and what is
said when an attack cannot run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from evaltest_utils import FAST_EVAL, compose_app
from omegaconf import OmegaConf

from lsa_train.app.adaptive_setup import feature_measure, feature_weights, probe_names
from lsa_train.app.errors import ConfigError
from lsa_train.app.evaluate import evaluate

ADAPTIVE_FAST = ["adaptive=true", "adaptive_attacks.restarts=2", "adaptive_attacks.kappas=[1]",
                 "masking.enabled=false", "autoattack.version=custom", "autoattack.attacks=[apgd-ce]"]


def test_adaptive_run_writes_every_attack_and_the_worst_case(
    train_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pyautoattack", reason="AutoAttack evaluation needs pyautoattack")
    monkeypatch.setenv("COLUMNS", "240")
    ckpt = train_run / "checkpoints" / "last.ckpt"
    # with the masking checks, so Square (32 of the 64 samples) joins the worst case; a run dir as transfer source
    overrides = [f"ckpt_path={ckpt}", *FAST_EVAL, *ADAPTIVE_FAST, "masking.enabled=true", "masking.large_eps=null",
                 f"transfer_from={train_run}"]
    evaluate(compose_app("evaluate", overrides, tmp_path / "eval"))
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    mvl = torch.load(ckpt, weights_only=True)["lsa_train"]["mvl"]
    assert mvl, "the tiny run's MVL is not empty"

    attacks = metrics["attacks"]
    assert list(attacks) == ["pgd", "square", "autoattack", "pgd_ce_restarts", "pgd_margin", "feature_pgd_kappa_1",
                             "transfer"]
    for entry in attacks.values():
        assert set(entry) == {"accuracy", "n_samples", "accuracy_on_common", "settings", "seconds"}
        assert 0.0 <= entry["accuracy"] <= 1.0
    assert attacks["autoattack"]["n_samples"] == 16 and attacks["pgd"]["n_samples"] == 64
    assert attacks["square"]["n_samples"] == 32
    assert attacks["feature_pgd_kappa_1"]["settings"]["probes"] == mvl
    # the run's regularizer.lambda (0.1, lsa.yaml's default) weights every MVL probe, as in its training term
    assert attacks["feature_pgd_kappa_1"]["settings"]["probe_weights"] == dict.fromkeys(mvl, 0.1)
    assert metrics["metadata"]["feature_probes"]["weights"] == dict.fromkeys(mvl, 0.1)
    assert metrics["metadata"]["feature_probes"]["weights_from"].startswith("the run's regularizer.lambda=0.1")
    assert metrics["metadata"]["feature_probes"]["from"].startswith("the run's MVL at its checkpoint")
    assert metrics["metadata"]["feature_probes"]["measure"] == "relative_error"  # the run's regularizer.measure
    assert attacks["feature_pgd_kappa_1"]["settings"]["loss"] == (
        "cross_entropy + kappa * sum_l w_l * relative_error at the probes")
    assert attacks["transfer"]["settings"]["source"] == str(ckpt)
    assert attacks["pgd_ce_restarts"]["settings"]["restarts"] == 2
    seeds = {name: entry["settings"]["seed"] for name, entry in attacks.items()}
    assert seeds["pgd"] == 0 and len(set(seeds.values())) == len(seeds)  # each attack its own random starts

    case = metrics["worst_case"]
    assert case["n_samples"] == 16 and case["n_evaluated"] == 64 and case["same_samples"] is False
    worst = metrics["worst_case_accuracy"]
    assert 0.0 <= worst <= min(entry["accuracy_on_common"] for entry in attacks.values())
    assert worst == pytest.approx(1 - (case["misclassified_clean"] + case["n_lost"]) / 16)
    assert sum(case["first_broken_by"].values()) == case["n_lost"]
    assert metrics["skipped_attacks"] == {}

    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| **Worst case over 7 attacks, per sample (16 of 64 samples, those every attack saw)** |" in report
    assert ("It covers 7 attacks: pgd, square, autoattack, pgd_ce_restarts, pgd_margin, feature_pgd_kappa_1, "
            "transfer.") in report
    assert "the worst case is computed on the 16 samples every attack saw" in report
    assert "| feature_pgd_kappa_1 |" in report and "| transfer |" in report
    assert "Worst case over 7 attacks" in printed and "transfer (64 samples)" in printed
    assert "worst case: The attacks ran on different samples" in printed


def test_model_without_a_run_says_why_the_feature_and_transfer_attacks_did_not_run(tmp_path: Path) -> None:
    base = ["model=cnn_b", "data=digits", "pgd.eps=0.1", *FAST_EVAL, *ADAPTIVE_FAST, "autoattack.enabled=false",
            "adaptive_attacks.kappas=[1]"]
    report = evaluate(compose_app("evaluate", base, tmp_path / "a"))
    assert set(report.attacks) == {"pgd", "pgd_ce_restarts", "pgd_margin"}
    assert set(report.skipped_attacks) == {"feature_pgd", "transfer"}
    assert "adaptive_attacks.probes" in report.skipped_attacks["feature_pgd"]
    text = (tmp_path / "a" / "report.md").read_text()
    assert "- Not run: feature_pgd: no lsa-train run" in text and "- Not run: transfer: no transfer_from" in text
    assert report.worst_case["same_samples"] is True

    # the override names the probes for any model
    report = evaluate(compose_app("evaluate", [*base, "adaptive_attacks.probes=[net.features.relu1]"], tmp_path / "b"))
    assert report.attacks["feature_pgd_kappa_1"]["settings"]["probes"] == ["net.features.relu1"]
    assert report.metadata["feature_probes"]["from"] == "adaptive_attacks.probes"
    # no run, so no lambda: the probes named on the command line weigh 1 each, and the report says why
    assert report.attacks["feature_pgd_kappa_1"]["settings"]["probe_weights"] == {"net.features.relu1": 1.0}
    assert report.metadata["feature_probes"]["weights_from"].startswith("1 per probe: adaptive_attacks.probes")
    with pytest.raises(ConfigError, match=r"do not fit the model.*net\.features\.relu1"):
        evaluate(compose_app("evaluate", [*base, "adaptive_attacks.probes=[nope]"], tmp_path / "c"))


def test_run_without_the_term_has_no_probes_to_attack() -> None:
    cfg = OmegaConf.create({"adaptive_attacks": {"probes": None}})
    plain_at = OmegaConf.create({"regularizer": {"lambda": 0.0, "mvl": {"mode": "none"}}})
    run = SimpleNamespace(run_cfg=plain_at, ckpt_path="x.ckpt")
    names, why = probe_names(cfg, run)
    assert names is None and "without the LSA term" in why
    lam_list = OmegaConf.create({"regularizer": {"lambda": [0.0, 0.0], "mvl": {"mode": "auto"}}})
    assert probe_names(cfg, SimpleNamespace(run_cfg=lam_list, ckpt_path="x.ckpt"))[0] is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adaptive_attacks.kappas=[-1]", r"adaptive_attacks\.kappas=\[-1\]"),
        ("adaptive_attacks.kappas=[0,1]", r"adaptive_attacks\.kappas=\[0, 1\] has 0: .* is plain PGD"),
        ("adaptive_attacks.restarts=0", r"adaptive_attacks\.restarts=0"),
        ("adaptive_attacks.probes=[]", r"adaptive_attacks\.probes=\[\]"),
        ("autoattack.n_samples=some", r"autoattack\.n_samples=some .*auto"),
        ("transfer_from=/nonexistent/last.ckpt", r"transfer_from=/nonexistent/last\.ckpt: .*does not exist"),
    ],
)
def test_bad_adaptive_values_are_config_errors(train_run: Path, tmp_path: Path, override: str, message: str) -> None:
    ckpt = train_run / "checkpoints" / "last.ckpt"
    cfg = compose_app("evaluate", [f"ckpt_path={ckpt}", "adaptive=true", override], tmp_path / "eval")
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)


def test_the_feature_attack_weights_each_mvl_probe_by_the_runs_lambda() -> None:
    def run(lam: object) -> SimpleNamespace:
        return SimpleNamespace(run_cfg=OmegaConf.create({"regularizer": {"lambda": lam}}))

    on_mvl = OmegaConf.create({"adaptive_attacks": {"probes": None}})
    assert feature_weights(on_mvl, run(0.5), ["a", "b"])[0] == [0.5, 0.5]
    weights, where = feature_weights(on_mvl, run([0.0, 2.0]), ["a", "b"])  # one per MVL probe, in its order
    assert weights == [0.0, 2.0] and "one per MVL probe" in where
    with pytest.raises(ConfigError, match=r"regularizer\.lambda=\[1\.0\] has 1 values but its MVL has 2 probes"):
        feature_weights(on_mvl, run([1.0]), ["a", "b"])
    named = OmegaConf.create({"adaptive_attacks": {"probes": ["a"]}})
    assert feature_weights(named, run(0.5), ["a"])[0] == [1.0]  # the run put no weight on probes it did not pick


def test_the_feature_attack_compares_in_the_measure_the_run_trained_with() -> None:
    def run(measure: object) -> SimpleNamespace:
        return SimpleNamespace(run_cfg=OmegaConf.create({"regularizer": {"lambda": 1.0, "measure": measure}}))

    assert feature_measure(run("relative_error_pairwise")) == "relative_error_pairwise"
    assert feature_measure(run("relative-error")) == "relative_error"  # the alias, as the run read it
    assert feature_measure(SimpleNamespace(run_cfg=None)) == "relative_error"  # model=/data=, no run
    with pytest.raises(ConfigError, match=r"regularizer\.measure=nope is not a known measure"):
        feature_measure(run("nope"))
