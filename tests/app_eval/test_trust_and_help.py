"""Checkpoints that need full unpickling load only with trust_checkpoint=true; --help lists what the
evaluate/analyze programs read."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch
from evaltest_utils import FAST_EVAL, compose_app, run_module

from lsa_train.app.errors import ConfigError
from lsa_train.app.evaluate import evaluate


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _copy_with(train_run: Path, tmp_path: Path, name: str, extra: object) -> Path:
    """The run's last.ckpt with an extra entry, saved into the run's checkpoints/ (so its config is found)."""
    checkpoint = torch.load(train_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["extra"] = extra
    path = train_run / "checkpoints" / name
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_that_needs_unpickling_loads_only_when_trusted(train_run: Path, tmp_path: Path) -> None:
    ckpt = _copy_with(train_run, tmp_path, "with_namespace.ckpt", argparse.Namespace(lr=0.1))
    with pytest.raises(ConfigError, match="add trust_checkpoint=true"):
        evaluate(compose_app("evaluate", [f"ckpt_path={ckpt}", *FAST_EVAL], tmp_path / "refused"))
    assert not (tmp_path / "refused" / "metrics.json").exists()
    evaluate(compose_app("evaluate", [f"ckpt_path={ckpt}", "trust_checkpoint=true", *FAST_EVAL,
                                      "autoattack.enabled=false"], tmp_path / "trusted"))
    metrics = json.loads((tmp_path / "trusted" / "metrics.json").read_text())
    assert metrics["metadata"]["weights_only_load"] is False


def test_a_hostile_checkpoint_runs_nothing_without_trust(train_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = _copy_with(train_run, tmp_path, "hostile.ckpt", _Hostile(marker))
    with pytest.raises(ConfigError, match=r"weights_only=True.*trust_checkpoint=true"):
        evaluate(compose_app("evaluate", [f"ckpt_path={ckpt}", *FAST_EVAL], tmp_path / "out"))
    assert not marker.exists()


@pytest.mark.parametrize("module", ["lsa_train.app.evaluate", "lsa_train.app.analyze"])
def test_help_lists_only_the_groups_the_program_reads(module: str, tmp_path: Path) -> None:
    proc = run_module(module, ["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model=<name>" in proc.stdout and "data=<name>" in proc.stdout
    listed = {line.split(":")[0] for line in proc.stdout.splitlines() if re.match(r"^[a-z_/]+: ", line)}
    assert not listed & {"attack", "trainer", "regularizer", "optimizer", "launcher", "experiment", "schema/attack"}
