"""``lsa-analyze``: six per-layer curves, the CM distribution and feature maps, their files, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from evaltest_utils import compose_app, last_line, run_module
from matplotlib import image
from omegaconf import OmegaConf

from lsa_train.analysis import PAPER_PERTURBATIONS
from lsa_train.analysis.distribution import cm_distribution_size
from lsa_train.app.analyze import ANALYSIS_FILES, analyze_run
from lsa_train.app.errors import ConfigError


def test_analyze_writes_six_curves(train_run: Path, tmp_path: Path) -> None:
    ckpt = train_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "analysis"
    cfg = compose_app("analyze", [f"ckpt_path={ckpt}", "num_samples=48", "torch_threads=1"], out)
    outcome = analyze_run(cfg)
    assert list(outcome["results"]) == list(PAPER_PERTURBATIONS)
    assert outcome["eps"] == 0.1  # the training eps
    for name in ANALYSIS_FILES.values():
        assert (out / name).is_file(), name
    for name in PAPER_PERTURBATIONS:
        assert (out / f"lsa_{name}.csv").is_file()
    rows = list(csv.DictReader((out / "lsa_layers.csv").open()))
    assert {r["perturbation"] for r in rows} == set(PAPER_PERTURBATIONS)
    payload = json.loads((out / "lsa_results.json").read_text())
    assert len(payload["results"]) == 6 and payload["settings"]["num_samples"] == 48
    # the digits test split has 360 samples: a stratified 48 of them, drawn with the analysis seed
    assert payload["settings"]["samples"] == "48 of 360 samples, stratified, seed 313"
    text = (out / "analysis.md").read_text()
    assert "48 of 360 samples, stratified, seed 313" in text
    assert "MVL per perturbation" in text and all(f"## {name}" in text for name in PAPER_PERTURBATIONS)


def test_analyze_cli_missing_ckpt(tmp_path: Path) -> None:
    ckpt = tmp_path / "missing.ckpt"
    proc = run_module("lsa_train.app.analyze", [f"ckpt_path={ckpt}"], cwd=tmp_path)
    assert proc.returncode == 2
    line = last_line(proc.stderr)
    assert line.startswith("lsa-analyze: error:") and str(ckpt) in line and "does not exist" in line, line


def test_analyze_draws_feature_maps_and_the_cm_distribution(train_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    cfg = compose_app("analyze", [f"ckpt_path={train_run / 'checkpoints' / 'last.ckpt'}", "num_samples=32",
                                  "perturbations=[gaussian,pgd]", "torch_threads=1"], out)
    assert cfg.feature_maps is True and cfg.feature_map_samples == 4  # on by default, for a few samples
    outcome = analyze_run(cfg)
    pgd = outcome["results"]["pgd"]
    shown = pgd.mvl_names or [pgd.probe_names[int(pgd.probe_means.argmax())]]
    maps = outcome["files"]["feature_maps"]
    assert [p.name for p in maps] == [f"{i:02d}_{name}.png" for i, name in enumerate(shown)]
    for path in maps:
        pixels = image.imread(path)
        assert pixels.shape[:2] in {(820, 1660), (900, 1000)}  # 4 samples x 4 channels (maps) or 16 bars
        assert pixels[..., :3].std() > 0.05
    distribution = image.imread(out / ANALYSIS_FILES["distribution"])
    width, height = cm_distribution_size(len(pgd.probe_names))
    assert distribution.shape[:2] == (round(height * 100), round(width * 100))
    assert distribution[..., :3].std() > 0.05
    text = (out / "analysis.md").read_text()
    assert "](lsa_cm_distribution.png)" in text and all(f"](feature_maps/{p.name})" in text for p in maps)


def test_analyze_feature_maps_of_named_probes_or_none(train_run: Path, tmp_path: Path) -> None:
    ckpt = train_run / "checkpoints" / "last.ckpt"
    fast = [f"ckpt_path={ckpt}", "num_samples=16", "perturbations=[fgsm]", "torch_threads=1"]
    named = compose_app("analyze", [*fast, "feature_map_samples=2", "feature_map_probes=[net.features.relu1]"],
                        tmp_path / "named")
    (path,) = analyze_run(named)["files"]["feature_maps"]
    assert path == tmp_path / "named" / "feature_maps" / "00_net.features.relu1.png"
    assert image.imread(path).shape[:2] == (460, 1660)  # 2 samples x 4 channels
    off = analyze_run(compose_app("analyze", [*fast, "feature_maps=false"], tmp_path / "off"))
    assert off["files"]["feature_maps"] == [] and not (tmp_path / "off" / "feature_maps").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("feature_map_samples=0", "feature_map_samples=0 must be an integer >= 1"),
        ("feature_maps=maybe", "feature_maps=maybe is invalid; choose true or false"),
        ("feature_map_probes=relu", "feature_map_probes=relu is invalid; give a list of probe names"),
        ("feature_map_probes=[nope]", "feature_map_probes=['nope']: probe pattern 'nope' matches no module"),
    ],
)
def test_analyze_rejects_bad_feature_map_settings(train_run: Path, tmp_path: Path, override: str,
                                                   message: str) -> None:
    cfg = compose_app("analyze", [f"ckpt_path={train_run / 'checkpoints' / 'last.ckpt'}", override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        analyze_run(cfg)
    assert not list(tmp_path.glob("*.png"))  # stopped before any analysis output


def test_readme_feature_maps_command(train_run: Path, tmp_path: Path) -> None:
    # README: python -m lsa_train.analyze ckpt_path=<run>/checkpoints/last.ckpt feature_maps=true feature_map_samples=8
    out = tmp_path / "out"
    proc = run_module("lsa_train.analyze", [f"ckpt_path={train_run / 'checkpoints' / 'last.ckpt'}",
                                            "feature_maps=true", "feature_map_samples=8", "num_samples=16",
                                            "perturbations=[pgd]", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    maps = sorted((out / "feature_maps").glob("*.png"))
    assert maps and all(image.imread(p).shape[0] in (1540, 1600) for p in maps)  # 8 rows: maps or bars


def test_default_analysis_budget_of_an_l2_run_is_its_linf_eval_eps() -> None:
    from omegaconf import OmegaConf

    from lsa_train.app.analyze import linf_training_eps

    l2_run = OmegaConf.create({"attack": {"eps": 0.5, "norm": "l2", "eval_eps": 0.1}})
    assert linf_training_eps(l2_run) == 0.1  # fgsm/pgd perturbations are Linf: not at the L2 radius 0.5
    linf_run = OmegaConf.create({"attack": {"eps": 0.2, "norm": "linf", "eval_eps": 0.3}})
    assert linf_training_eps(linf_run) == 0.2


def test_analyze_of_a_normal_run_asks_for_eps(train_run: Path, tmp_path: Path) -> None:
    # a run trained with attack=none has eps 0: analysing at it gave an empty MVL without a word
    run_cfg = OmegaConf.load(train_run / ".hydra" / "config.yaml")
    run_cfg.attack.eps = 0.0
    config_path = tmp_path / "normal_run.yaml"
    OmegaConf.save(run_cfg, config_path)
    # the run's checkpoint without its run record (which would refuse this config's attack.eps=0 as not its own)
    checkpoint = torch.load(train_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del checkpoint["callbacks"]["RunRecordCallback"]
    ckpt = tmp_path / "last.ckpt"
    torch.save(checkpoint, ckpt)
    args = [f"ckpt_path={ckpt}", f"run_config={config_path}", "num_samples=8", "torch_threads=1"]
    with pytest.raises(ConfigError, match=r"attack\.eps=0.*set eps=<budget>, e\.g\. eps=0\.1"):
        analyze_run(compose_app("analyze", args, tmp_path / "refused"))
    outcome = analyze_run(compose_app("analyze", [*args, "eps=0.1", "perturbations=[pgd]"], tmp_path / "ok"))
    assert outcome["eps"] == 0.1 and float(outcome["results"]["pgd"].probe_means.max()) > 0


def test_analyze_takes_a_stratified_subset_not_the_first_samples(train_run: Path) -> None:
    """The subset has the split's class proportions (within one sample per class) and depends on the seed."""
    from collections import Counter

    import torch

    from lsa_train.app.analyze import stratified_samples
    from lsa_train.app.checkpoint_loading import load_for_app

    cfg = compose_app("analyze", [f"ckpt_path={train_run / 'checkpoints' / 'last.ckpt'}"], train_run / "unused")
    datamodule = load_for_app(cfg).datamodule
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    everything = torch.cat([y for _, y in loader])
    x, y, text = stratified_samples(loader, 50, seed=313)
    assert x.shape[0] == 50 and text == f"50 of {len(everything)} samples, stratified, seed 313"
    counts, totals = Counter(y.tolist()), Counter(everything.tolist())
    assert all(abs(counts[c] - 50 * n / len(everything)) < 1 for c, n in totals.items())
    again, other = stratified_samples(loader, 50, seed=313)[0], stratified_samples(loader, 50, seed=1)[0]
    assert torch.equal(x, again) and not torch.equal(x, other)
