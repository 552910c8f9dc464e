"""A setting that a switch turned off is named in the report, not silently ignored."""

from __future__ import annotations

from pathlib import Path

from evaltest_utils import compose_app
from omegaconf import OmegaConf

from lsa_train.app.evaluate import evaluate
from lsa_train.app.overrides import inert_overrides


def _evaluate_cfg(**values: object):
    base = {"adaptive": False, "transfer_from": None, "autoattack": {"enabled": True, "n_samples": "auto"},
            "masking": {"enabled": True, "tol": 0.02}, "adaptive_attacks": {"steps": None, "restarts": 5}}
    cfg = OmegaConf.create(base)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_each_switch_names_its_overrides_and_only_those() -> None:
    overrides = ["autoattack.n_samples=50", "masking.tol=0.1", "adaptive_attacks.restarts=3",
                 "adaptive_attacks.steps=5", "pgd.steps=7"]
    assert inert_overrides("evaluate", _evaluate_cfg(), overrides) == [
        "adaptive_attacks.restarts=3 has no effect: adaptive=false",
        "adaptive_attacks.steps=5 has no effect: adaptive=false and transfer_from=null",
    ]
    off = _evaluate_cfg(**{"autoattack.enabled": False, "masking.enabled": False, "transfer_from": "base.ckpt"})
    assert inert_overrides("evaluate", off, [*overrides, "autoattack.enabled=false"]) == [
        "autoattack.n_samples=50 has no effect: autoattack.enabled=false",
        "masking.tol=0.1 has no effect: masking.enabled=false",
        "adaptive_attacks.restarts=3 has no effect: adaptive=false",  # steps sets the transfer attack
    ]
    assert inert_overrides("evaluate", _evaluate_cfg(adaptive=True), overrides) == []
    analyze = OmegaConf.create({"feature_maps": False, "feature_map_samples": 4, "eta": None, "top_k": 2})
    assert inert_overrides("analyze", analyze, ["feature_map_samples=8", "num_samples=10", "eta=0.5"]) == [
        "feature_map_samples=8 has no effect: feature_maps=false",
        "eta=0.5 has no effect: top_k=2 selects the MVL instead",
    ]


def test_training_names_awp_and_loss_weights_that_do_not_act() -> None:
    cfg = OmegaConf.create({"awp": {"gamma": 0.0, "warmup": 0}, "attack": {"base_loss": "ce"},
                            "module": {"mart_beta": 6.0, "trades_beta": 6.0},
                            "regularizer": {"mvl": {"eta": 0.25, "top_k": None, "min_layers": 1}}})
    overrides = ["awp.warmup=3", "module.mart_beta=3", "module.trades_beta=2", "awp.gamma=0", "regularizer.mvl.eta=1"]
    assert inert_overrides("train", cfg, overrides) == [
        "awp.warmup=3 has no effect: awp.gamma=0",
        "module.mart_beta=3 has no effect: attack.base_loss=ce (it acts with attack.base_loss=mart)",
        "module.trades_beta=2 has no effect: attack.base_loss=ce (it acts with attack.base_loss=trades)",
    ]
    OmegaConf.update(cfg, "awp.gamma", 5e-3)
    OmegaConf.update(cfg, "attack.base_loss", "mart")
    OmegaConf.update(cfg, "regularizer.mvl.top_k", 1)
    assert inert_overrides("train", cfg, overrides) == [
        "module.trades_beta=2 has no effect: attack.base_loss=mart (it acts with attack.base_loss=trades)",
        "regularizer.mvl.eta=1 has no effect: regularizer.mvl.top_k=1 selects the MVL instead"]


def test_training_names_augmentation_settings_that_do_not_act() -> None:
    folder = OmegaConf.create({"data": {"_target_": "lsa_train.data.ImageFolderDataModule", "augment": False,
                                        "crop_padding": 4}})
    assert inert_overrides("train", folder, ["data.augment=false", "data.crop_padding=2"]) == [
        "data.crop_padding=2 has no effect: data.augment=false"]
    OmegaConf.update(folder, "data.augment", True)
    assert inert_overrides("train", folder, ["data.crop_padding=2"]) == []
    mnist = OmegaConf.create({"data": {"_target_": "lsa_train.data.TorchvisionDataModule", "name": "mnist",
                                       "augment": True}})
    assert inert_overrides("train", mnist, ["data.augment=true"]) == [
        "data.augment=true has no effect: data.name=mnist has no training augmentation"]
    OmegaConf.update(mnist, "data.name", "cifar10")
    assert inert_overrides("train", mnist, ["data.augment=false"]) == []


def test_evaluate_writes_the_line_into_its_report(tmp_path: Path) -> None:
    fast = ["model=cnn_b", "data=digits", "pgd.eps=0.1", "max_samples=16", "pgd.steps=2", "fgsm.eps_grid=[0]",
            "autoattack.enabled=false", "masking.enabled=false", "torch_threads=1", "autoattack.version=rand"]
    report = evaluate(compose_app("evaluate", fast, tmp_path / "out"))
    line = "autoattack.version=rand has no effect: autoattack.enabled=false"
    assert line in report.warnings and line in (tmp_path / "out" / "report.md").read_text()
