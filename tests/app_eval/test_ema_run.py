"""``lsa-train callbacks=ema``, in process: the run summary says the weights are an EMA, the tested checkpoint
holds the EMA weights, and ``lsa-evaluate`` / ``lsa-analyze`` load those weights and say so, also for a foreign
copy of the run (its ``callbacks.ema`` settings pass the foreign-config checks)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from evaltest_utils import compose_app
from omegaconf import OmegaConf

from lsa_train.app.checkpoint_loading import load_run
from lsa_train.app.train import main
from lsa_train.trust import TrustPolicy

#: Two short epochs (6 optimizer steps) of the default digits run.
SHORT = [
    "trainer.max_epochs=2", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "regularizer.mvl.num_samples=32",
    "regularizer.mvl.plot=false", "attack.steps=2", "logger=none", "callbacks.rich_model_summary=null",
    "callbacks.rich_progress_bar=null", "torch_threads=1",
]


def _train(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["lsa-train", *args])
    main()


def _network(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ema") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(run_dir.parent)
        _train(monkeypatch, "callbacks=ema", "callbacks.ema.decay=0.9", *SHORT, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
def test_the_summary_says_ema_and_the_tested_checkpoint_holds_the_ema_weights(ema_run: Path) -> None:
    summary = json.loads((ema_run / "metrics.json").read_text())
    assert summary["weights"] == "last (after 2 epochs, step 6); EMA (decay 0.9; BatchNorm statistics averaged too)"
    weights_row = "| weights | last (after 2 epochs, step 6); EMA (decay 0.9; BatchNorm statistics averaged too) |"
    assert (ema_run / "report.md").read_text().count(weights_row) == 1
    # 6 updates of an average spanning about 10 steps: said, with the share the first step still has (0.9 ** 5)
    assert any("spans about 10 optimizer steps" in n and "made 6" in n and "59%" in n for n in summary["notes"])
    tested = torch.load(summary["tested_checkpoint"], weights_only=True)
    assert tested["callbacks"]["EMAWeightAveraging"]["decay"] == 0.9
    ema, live = _network(tested["state_dict"]), _network(tested["current_model_state"])
    assert ema.keys() == live.keys() and any(not torch.equal(ema[k], live[k]) for k in ema)


@pytest.mark.slow
def test_evaluate_and_analyze_load_the_ema_weights_and_say_so(ema_run: Path, tmp_path: Path) -> None:
    from lsa_train.app.analyze import analyze_run
    from lsa_train.app.evaluate import evaluate

    last = ema_run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    run = load_run(last)
    loaded = run.model.state_dict()
    for name, tensor in _network(saved["state_dict"]).items():
        assert torch.equal(loaded[name], tensor), name
    assert run.averaging == "EMA (decay 0.9)" and "EMA (decay 0.9) weights" in run.weights

    cfg = compose_app("evaluate", [f"ckpt_path={last}", "autoattack.enabled=false", "masking.square_queries=null",
                                   "max_samples=16", "pgd.steps=2", "torch_threads=1"], tmp_path / "eval")
    evaluate(cfg)
    assert "EMA (decay 0.9)" in (tmp_path / "eval" / "report.md").read_text()
    cfg = compose_app("analyze", [f"ckpt_path={last}", "num_samples=8", "perturbations=[gaussian]",
                                  "feature_maps=false", "torch_threads=1"], tmp_path / "analysis")
    analyze_run(cfg)
    assert "EMA (decay 0.9)" in (tmp_path / "analysis" / "analysis.md").read_text()


@pytest.mark.slow
def test_a_foreign_copy_of_an_ema_run_passes_the_foreign_config_checks(ema_run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "colleague"
    shutil.copytree(ema_run, foreign)
    (foreign / ".hydra" / "signature.json").unlink()
    saved = OmegaConf.load(foreign / ".hydra" / "config.yaml")
    assert saved.callbacks.ema._target_ == "lsa_train.training.EMAWeightAveraging"
    run = load_run(foreign / "checkpoints" / "last.ckpt", trust=TrustPolicy())
    assert not run.signed and run.averaging == "EMA (decay 0.9)"


def test_a_bad_decay_is_one_line_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        _train(monkeypatch, "callbacks=ema", "callbacks.ema.decay=1.5", *SHORT, f"hydra.run.dir={run_dir}")
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("lsa-train: error: callbacks.ema: decay=1.5 is invalid")
    assert "strictly between 0 and 1" in line
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_an_ema_run_resumed_from_last_ckpt_ends_with_the_uninterrupted_average(
    ema_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ema_run`` trained 2 epochs straight; the same command for 1 epoch, then resumed to 2, ends with the same
    EMA, the same live weights and the same number of averaged steps."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    first = [a for a in SHORT if not a.startswith("trainer.max_epochs")]
    _train(monkeypatch, "callbacks=ema", "callbacks.ema.decay=0.9", *first, "trainer.max_epochs=1",
           f"hydra.run.dir={run_dir}")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    _train(monkeypatch, f"ckpt_path={last}", "trainer.max_epochs=2")
    straight = torch.load(ema_run / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 6
    assert int(resumed["averaging_state"]["n_averaged"]) == int(straight["averaging_state"]["n_averaged"]) == 6
    for key in ("state_dict", "current_model_state"):
        assert resumed[key].keys() == straight[key].keys()
        for name, tensor in straight[key].items():
            assert torch.allclose(resumed[key][name].float(), tensor.float(), atol=1e-6), (key, name)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert "; EMA (decay 0.9;" in summary["weights"]
