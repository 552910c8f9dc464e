"""A key added with ``+`` that nothing reads is refused with the nearest known key (issue 20, item 6): a typo
followed through Hydra's "use +key" hint must not train with the default and no word."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from apptest_utils import compose_train

from lsa_train.app.errors import ConfigError
from lsa_train.app.overrides import check_added_keys
from lsa_train.app.train import main, train


@pytest.mark.parametrize(("override", "hint"), [
    ("+regularizer.lamda=0.5", "did you mean regularizer.lambda?"),
    ("+regularizer.mvl.etaa=2", "did you mean regularizer.mvl.eta?"),
    ("+awp.gama=0.01", "did you mean awp.gamma?"),
    ("++seeed=3", "did you mean seed?"),
])
def test_an_added_key_nothing_reads_is_refused_before_training(override: str, hint: str, tmp_path: Path) -> None:
    cfg = compose_train(["trainer=debug", override], tmp_path)
    with pytest.raises(ConfigError, match="nothing would read an added one") as info:
        train(cfg)
    assert hint in str(info.value) and override in str(info.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


def test_added_arguments_of_open_nodes_and_forced_existing_keys_pass() -> None:
    check_added_keys("train", ["model=custom", "model._target_=my.Net", "+model.width=16", "++trainer.max_epochs=2",
                               "+callbacks.kill._target_=k.Kill", "++regularizer.lambda=0.3", "+data.extra=1"])
    check_added_keys("evaluate", ["+data.extra=1", "++pgd.steps=3"])


def test_evaluate_and_analyze_name_the_key_elsewhere() -> None:
    with pytest.raises(ConfigError, match=r"\+eps=0.2: the top level has no key 'eps'.*did you mean pgd.eps\?"):
        check_added_keys("evaluate", ["+eps=0.2"])
    with pytest.raises(ConfigError, match=r"did you mean num_samples\?"):
        check_added_keys("analyze", ["+num_sample=10"])


def _cli_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one stderr line of ``lsa-train <args>``, run in process, which must exit with code 2."""
    monkeypatch.setattr(sys, "argv", ["lsa-train", *args])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("lsa-train: error: ") and "\n" not in line
    return line


def test_hydras_append_hint_becomes_the_nearest_key(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    line = _cli_error(monkeypatch, capsys, "regularizer.lamda=0.5")
    assert line.startswith("lsa-train: error: Could not override 'regularizer.lamda'")
    assert "did you mean regularizer.lambda?" in line and "+regularizer.lamda" not in line


def test_a_near_miss_under_an_open_node_names_the_key_and_keeps_the_append_route(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # trainer is open (+trainer.x passes a new Trainer argument), but max_epoch is a typo of max_epochs
    line = _cli_error(monkeypatch, capsys, "trainer.max_epoch=4")
    assert line.startswith("lsa-train: error: Could not override 'trainer.max_epoch'")
    assert "did you mean trainer.max_epochs?" in line and "+trainer.max_epoch=..." in line


@pytest.mark.parametrize("bad", ["regularizer.lamda=0,0.5", "attack=pgd,mrt"])
def test_a_sweep_stopped_by_a_typo_leaves_no_sweep_folder_and_keeps_an_existing_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    monkeypatch.chdir(tmp_path)
    kept = tmp_path / "earlier"
    kept.mkdir()
    (kept / "multirun.yaml").write_text("an earlier sweep\n")
    for sweep_dir, should_exist in ((tmp_path / "new" / "sweep", False), (kept, True)):
        _cli_error(monkeypatch, capsys, "-m", bad, f"hydra.sweep.dir={sweep_dir}")
        assert sweep_dir.exists() == should_exist
    assert (kept / "multirun.yaml").is_file()
