"""``train(cfg)`` in-process: fast_dev_run for each attack and MVL mode, resume from a checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from apptest_utils import FAST

from lsa_train.app.errors import ConfigError
from lsa_train.app.train import main, metric_value, train

#: Limits for the short real (not fast_dev_run) runs: a few batches, full test sweep on one batch.
SHORT = [
    "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    "regularizer.mvl.num_samples=64", "callbacks.rich_model_summary=null", "trainer.num_sanity_val_steps=0",
]


def test_default_fast_dev_run(make_cfg, tmp_path: Path) -> None:
    metrics, objects = train(make_cfg(*FAST))
    for key in ("val/acc_clean", "val/acc_pgd", "test/acc_clean", "test/acc_pgd", "test/rg_score"):
        assert 0.0 <= metrics[key] <= (600.0 if key == "test/rg_score" else 1.0), key
    assert metrics["test/acc_fgsm_0"] == metrics["test/acc_clean"]  # eps 0 on the same samples
    assert metrics["test/acc_pgd"] <= metrics["test/acc_clean"] and metrics["val/acc_pgd"] <= metrics["val/acc_clean"]
    assert metrics["test/acc_fgsm_0.5"] <= metrics["test/acc_clean"]
    grid = objects["module"].test_eps_grid
    assert metrics["test/rg_score"] == pytest.approx(100 * sum(metrics[f"test/acc_fgsm_{e:g}"] for e in grid), rel=1e-5)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["setting"]["model"] == "cnn_b"
    assert (tmp_path / "run" / "report.md").is_file()
    assert list((tmp_path / "run" / "lsa").glob("*.png")), "the MVL refresh writes its figure into the run dir"
    assert (tmp_path / "run" / "lsa" / "mvl_history.png").is_file()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "](lsa/mvl_history.png)" in report and "](lsa/mvl_history.csv)" in report
    assert torch.get_num_threads() >= 1  # restored after the run


@pytest.mark.parametrize(
    ("attack", "extra", "base_loss"),
    [
        ("fgsm", [], "ce"),
        ("fgsm_rs", [], "ce"),
        ("pgd_l2", [], "ce"),
        ("apgd", [], "ce"),
        ("trades", [], "trades"),
        ("mart", [], "mart"),
        ("none", ["regularizer=none"], "normal"),
        ("pgd", ["attack.base_loss=trades"], "trades"),
    ],
)
def test_each_attack_and_base_loss(make_cfg, attack: str, extra: list[str], base_loss: str) -> None:
    metrics, objects = train(make_cfg(*FAST, f"attack={attack}", *extra))
    module = objects["module"]
    assert module.base_loss_name == base_loss
    assert type(module.attack).__name__ == {"none": "NoAttack", "fgsm_rs": "FGSMRS", "pgd_l2": "PGDL2",
                                           "trades": "TRADESAttack", "mart": "MARTAttack"}.get(attack, attack.upper())
    assert math.isfinite(metrics["train/loss"]) and "test/acc_pgd" in metrics


def test_awp_reaches_the_module(make_cfg) -> None:
    metrics, objects = train(make_cfg(*FAST, "attack=mart", "awp.gamma=5e-3", "awp.warmup=0"))
    awp = objects["module"].awp
    assert awp is not None and (awp.gamma, awp.warmup) == (5e-3, 0) and objects["module"].base_loss_name == "mart"
    assert math.isfinite(metrics["train/loss"])
    _, plain = train(make_cfg(*FAST, out="plain"))
    assert plain["module"].awp is None  # awp.gamma 0 (the default) is off


@pytest.mark.parametrize(
    ("overrides", "expected_mvl"),
    [
        (["regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[1]"], ["net.features.relu2"]),
        (["regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[0,2]", "regularizer.lambda=[0.1,0.2]",
          "regularizer.mvl.log_analysis=false"], ["net.features.relu1", "net.features.relu3"]),
        (["regularizer.mvl.mode=once", "regularizer.mvl.top_k=2", "regularizer.lambda=[0.1,0.2]"], None),
        (["regularizer=none"], []),
    ],
)
def test_mvl_modes_train(make_cfg, overrides: list[str], expected_mvl: list[str] | None) -> None:
    _, objects = train(make_cfg(*FAST, *overrides))
    mvl = objects["summary"]["mvl"]
    if expected_mvl is None:
        assert len(mvl) == 2
    else:
        assert mvl == expected_mvl


def test_lambda_zero_skips_the_mvl_analysis_and_says_so(make_cfg, tmp_path: Path) -> None:
    """With lambda 0 the MVL enters no loss: no per-epoch analysis runs (no callback, no history, no LSA
    figure) and the summary says it; ``regularizer.mvl.log_analysis=true`` runs it as a measurement."""
    _, skipped = train(make_cfg(*FAST, "regularizer.lambda=0", "regularizer.mvl.every_n_epochs=2", out="skip"))
    assert skipped["mvl_callback"] is None
    assert not any(type(cb).__name__ == "MVLRefreshCallback" for cb in skipped["trainer"].callbacks)
    summary = skipped["summary"]
    assert summary["mvl_history"] == [] and not (tmp_path / "skip" / "lsa").exists()
    skip_line = ("MVL analysis: skipped (lambda = 0); regularizer.mvl.log_analysis=true runs it as a "
                 "measurement")
    assert skip_line in summary["notes"]
    assert "regularizer.mvl.every_n_epochs=2 has no effect: MVL analysis: skipped (lambda = 0)" in summary["notes"]
    report = (tmp_path / "skip" / "report.md").read_text()
    assert skip_line in report

    _, measured = train(make_cfg(*FAST, "regularizer.lambda=0", "regularizer.mvl.log_analysis=true", out="measure"))
    assert measured["mvl_callback"] is not None and len(measured["summary"]["mvl_history"]) >= 1
    assert measured["module"].regularizer is None  # measured, not regularized
    assert any(n.startswith("MVL analysis: run as a measurement") for n in measured["summary"]["notes"])
    assert list((tmp_path / "measure" / "lsa").glob("*.png"))

    _, plain = train(make_cfg(*FAST, "regularizer=none", out="plain"))
    assert plain["mvl_callback"] is None
    assert "MVL analysis: skipped (lambda = 0, regularizer.mvl.mode=none)" in plain["summary"]["notes"]


@pytest.mark.slow
def test_resnet18_pgd_on_digits_offline(make_cfg) -> None:
    """``model=resnet18 attack=pgd`` works as written on the embedded 8x8 digits."""
    small_batches = ["data.batch_size=32", "data.eval_batch_size=32"]
    metrics, objects = train(make_cfg(*FAST, *small_batches, "model=resnet18", "attack=pgd"))
    assert list(objects["summary"]["model_kwargs"]["input_size"]) == [8, 8]
    assert 0.0 <= metrics["test/acc_pgd"] <= metrics["test/acc_clean"] <= 1.0


@pytest.mark.slow
def test_resume_restores_epochs_and_mvl(make_cfg, tmp_path: Path) -> None:
    _, first = train(make_cfg(*SHORT, "trainer.max_epochs=1", out="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    history = first["summary"]["mvl_history"]
    assert len(history) == 1  # the analysis at fit start (refreshes happen at the start of epochs >= 1)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["lsa_train"]["mvl"] == first["summary"]["mvl"]

    metrics, second = train(make_cfg(*SHORT, "trainer.max_epochs=2", f"ckpt_path={last}", out="second"))
    trainer = second["trainer"]
    assert trainer.current_epoch == 2 and trainer.global_step == 6  # 3 batches per epoch, 2 epochs
    resumed = second["summary"]["mvl_history"]
    assert resumed[:1] == history and len(resumed) == 2  # restored from the checkpoint, plus epoch 1's refresh
    assert second["summary"]["resumed_from"] == str(last)
    assert (tmp_path / "second" / "checkpoints" / "last.ckpt").is_file()
    assert "val/acc_pgd_best" in metrics


def test_a_setting_that_does_not_act_is_a_line_of_the_summary(make_cfg, tmp_path: Path) -> None:
    _, objects = train(make_cfg(*FAST, "module.mart_beta=3"))  # attack=pgd: the Madry loss has no KL term
    line = "module.mart_beta=3 has no effect: attack.base_loss=ce (it acts with attack.base_loss=mart)"
    assert line in objects["summary"]["notes"]
    assert line in (tmp_path / "run" / "report.md").read_text()


def test_a_new_eps_gets_a_step_size_for_it(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``attack.eps=0.2`` alone: PGD trains with alpha 0.06 (pgd.yaml's 0.3 x eps), and the summary says so."""
    from lsa_train.app import overrides

    monkeypatch.setattr(overrides, "hydra_task_overrides", lambda: ["attack.eps=0.2"])
    _, objects = train(make_cfg(*FAST, "attack.eps=0.2", "regularizer=none"))
    assert objects["module"].attack.alpha == pytest.approx(0.06) and objects["module"].attack.eps == 0.2
    line = next(n for n in objects["summary"]["notes"] if n.startswith("attack.alpha=0.06 derived"))
    assert line in (tmp_path / "run" / "report.md").read_text()


def test_the_test_fgsm_grid_follows_the_training_eps(make_cfg, tmp_path: Path) -> None:
    """``module.test_eps_grid=auto``: 0..5 x attack.eval_eps (the paper's grid at 0.1), capped at 1; a list as given."""
    from lsa_train.app.builders import test_eps_grid

    assert test_eps_grid(make_cfg()) == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert test_eps_grid(make_cfg("attack.eps=0.3")) == (0.0, 0.3, 0.6, 0.9, 1.0)
    assert test_eps_grid(make_cfg("attack=none", "attack.eval_eps=0.05")) == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
    assert test_eps_grid(make_cfg("module.test_eps_grid=[0.0,0.2]")) == (0.0, 0.2)
    for bad in ("module.test_eps_grid=paper", "module.test_eps_grid=[0.1,-0.1]", "module.test_eps_grid=[]"):
        with pytest.raises(ConfigError, match=r"module.test_eps_grid=.* must be auto"):
            test_eps_grid(make_cfg(bad))
    metrics, objects = train(make_cfg(*FAST, "attack.eps=0.2", "regularizer=none"))
    assert objects["module"].test_eps_grid == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert {k for k in metrics if k.startswith("test/acc_fgsm_")} == {
        f"test/acc_fgsm_{e:g}" for e in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}


def test_normalized_training_inputs_are_a_line_of_the_summary(make_cfg, tmp_path: Path) -> None:
    """A user's data module that normalizes: the module's one warning lands in the summary and report."""
    _, objects = train(make_cfg(*FAST, "data=custom", "data._target_=own_data.NormalizedDigits",
                                "regularizer=none"))
    line = next(n for n in objects["summary"]["notes"] if n.startswith("training inputs leave [0, 1] (min -2, max 2)"))
    assert line in (tmp_path / "run" / "report.md").read_text()
    _, plain = train(make_cfg(*FAST, "regularizer=none", out="plain"))
    assert not any("training inputs leave" in n for n in plain["summary"]["notes"])


def test_main_with_a_config_returns_the_optimized_metric(make_cfg, tmp_path: Path) -> None:
    value = main(make_cfg(*FAST))
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert isinstance(value, float) and value == pytest.approx(logged["val/acc_pgd"])  # optimized_metric


def test_missing_optimized_metric_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"optimized_metric='val/nope'.*val/acc_pgd"):
        metric_value({"val/acc_pgd": 0.5}, "val/nope")
    assert metric_value({"val/acc_pgd": 0.5}, None) is None
    # a resume with no epoch left logs only test metrics: a fit metric is absent, not misspelled
    assert metric_value({"test/acc_pgd": 0.4}, "val/acc_pgd", only_tested=True) is None
    assert metric_value({"test/acc_pgd": 0.4}, "test/acc_pgd", only_tested=True) == 0.4
    with pytest.raises(ConfigError, match=r"optimized_metric='test/nope'"):
        metric_value({"test/acc_pgd": 0.4}, "test/nope", only_tested=True)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["attack.eps=-0.1"], r"attack\.eps=-0\.1"),
        (["regularizer.lambda=[0.1,0.2]", "regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[2]"],
         r"regularizer\.lambda=\[0\.1,0\.2\] has 2 values"),
        (["regularizer.lambda=[0.1,0.2]"], r"regularizer\.lambda=\[0\.1,0\.2\] is a list"),
        (["regularizer.lambda=-1"], r"regularizer\.lambda=-1"),
        (["model.input_size=28"], r"model cnn_b cannot take the data's input shape \(1, 8, 8\)"),
        (["model.name=nope"], r"model\.name='nope'"),
        (["model=tv", "model.name=tv:nope"], r"tv:nope"),
        (["model=tv", "model.name=tv:alexnet"], r"model tv:alexnet cannot take"),
        (["regularizer.mvl.mode=fixed", "regularizer.mvl.layers=[9]"], r"index 9"),
        (["regularizer.mvl.probes=[nothing*]"], r"nothing"),
        (["regularizer.mvl.min_layers=-1"], r"regularizer\.mvl\.min_layers=-1 must be an integer >= 0"),
        (["regularizer.mvl.min_layers=5"], r"regularizer\.mvl\.min_layers=5 exceeds the model's 4 activations probes"),
        (["attack=none"], r"regularizer=none"),
        (["torch_threads=0"], r"torch_threads=0"),
        (["trainer.max_epochs=0"], r"trainer\.max_epochs=0 trains nothing"),
        (["++trainer.max_steps=0"], r"trainer\.max_steps=0 trains nothing"),
        (["optimizer.lr=-1"], r"optimizer=adam: Invalid learning rate: -1"),
        (["awp.gamma=-1"], r"module: awp gamma must be a finite number >= 0 \(0 = off\), got -1$"),
        (["awp.warmup=-1"], r"module: awp warmup must be an integer number of epochs >= 0, got -1"),
        (["module.mart_beta=-2", "attack=mart"], r"module: mart_beta must be a finite number >= 0, got -2"),
        (["regularizer.measure=relative_error_pairwise", "data.batch_size=1"],
         r"regularizer\.measure=relative_error_pairwise pairs each sample .* data\.batch_size=1"),
        (["regularizer.measure=relative_error_pairwise", "regularizer.mvl.num_samples=1"],
         r"regularizer\.mvl\.num_samples=1; use 2 or more"),
    ],
)
def test_config_errors_before_training(make_cfg, tmp_path: Path, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train(make_cfg(*FAST, *overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_issue21_variants_train(make_cfg, tmp_path: Path) -> None:
    """The ablation settings of issue 21 reach the run: the pairwise-normalized term, the clean branch as a
    constant, and the weakened training attack (clamp inside the forward), on MART with LR-L0."""
    from lsa_train.analysis.measures import relative_error_pairwise

    metrics, objects = train(make_cfg(
        *FAST, "attack=mart", "attack.clip=forward", "regularizer.lambda=1", "regularizer.mvl.mode=fixed",
        "regularizer.mvl.layers=[0]", "regularizer.measure=relative_error_pairwise", "regularizer.stop_clean_grad=true",
    ))
    module = objects["module"]
    assert module.regularizer.measure is relative_error_pairwise and module.regularizer.stop_clean_grad
    assert module.attack.clip == "forward" and module.test_attack.clip == "project"  # only training is weakened
    assert objects["mvl_callback"].measure == "relative_error_pairwise"  # the analysis compares as the term does
    assert math.isfinite(metrics["train/lr_term"]) and metrics["train/lr_term"] > 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["setting"]["attack_clip"] == "forward"
