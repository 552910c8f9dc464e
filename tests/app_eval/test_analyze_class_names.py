"""``lsa-analyze`` on a user's image folder: class names in the feature-map titles and the analysis facts, and
the layers the default probes miss (a user CNN with GELU modules and one ``F.relu``) in ``analysis.md``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from evaltest_utils import compose_app
from PIL import Image

import lsa_train.analysis as analysis
from lsa_train.app.analyze import analyze_run

CLASSES = ("cat", "dog", "eel")


def test_feature_maps_name_the_classes_and_analysis_md_names_unprobed_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "images" / "train" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / "train" / name
                                                                              / f"{i}.png")
    seen: dict[str, object] = {}
    original = analysis.plot_feature_maps

    def recording(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(analysis, "plot_feature_maps", recording)
    out = tmp_path / "analysis"
    cfg = compose_app("analyze", [
        "model=custom", "model._target_=shared_nets.HalfFunctionalNet", "data=imagefolder",
        f"data.root={tmp_path / 'images'}", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "data.num_workers=0", "eps=0.1", "num_samples=4", "perturbations=[gaussian,pgd]", "feature_map_samples=2",
        "torch_threads=1",
    ], out)
    outcome = analyze_run(cfg)
    assert seen["class_names"] == list(CLASSES) and outcome["files"]["feature_maps"]
    assert outcome["settings"]["classes"] == "cat, dog, eel"
    text = (out / "analysis.md").read_text()
    assert "**classes**: `cat, dog, eel`" in text
    assert "## Notes" in text and "never MVL candidates: conv2;" in text and "probes='learnable'" in text
    assert "conv2" in json.loads((out / "lsa_results.json").read_text())["notes"][0]
