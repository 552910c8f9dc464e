"""Runs that mean what they say (issue 25, item 4): ``last.ckpt`` holds every finished epoch, a resume that
switches a config group keeps the run's own values, the summary and ``lsa-evaluate`` name the same weights, a
bare checkpoint is checked against what it records, and a resumed run's wall time counts both parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsa_train.app.report import summary_rows
from lsa_train.app.train import train

#: A few batches per epoch, no loggers or rich output, no figures.
SHORT = [
    "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    "regularizer.mvl.num_samples=32", "regularizer.mvl.plot=false", "attack.steps=2", "logger=none",
    "callbacks.rich_model_summary=null", "callbacks.rich_progress_bar=null", "trainer.num_sanity_val_steps=0",
    "module.test_eps_grid=[0.0,0.2]",
]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_last_ckpt_holds_every_epoch_also_without_validation(make_cfg, tmp_path: Path) -> None:
    # validation in epoch 2 only: epoch 3 ends without one, and last.ckpt must still hold it
    _, objects = train(make_cfg(*SHORT, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"))
    last = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)  # 0-based epoch index 2: the third, 2 steps each
    assert objects["trainer"].global_step == 6


def test_a_resumed_runs_wall_time_counts_both_parts(make_cfg, tmp_path: Path) -> None:
    _, first = train(make_cfg(*SHORT, "trainer.max_epochs=1", out="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    recorded = next(v["wall_time_s"] for k, v in _load(last)["callbacks"].items() if "WallTime" in k)
    assert 0 < recorded <= first["summary"]["wall_time_s"]  # the time up to the checkpoint, saved in it
    _, second = train(make_cfg(*SHORT, "trainer.max_epochs=2", f"ckpt_path={last}", out="second"))
    summary = second["summary"]
    assert summary["wall_time_before_resume_s"] == round(recorded, 2)
    assert summary["wall_time_s"] == pytest.approx(recorded + summary["wall_time_this_part_s"], abs=0.02)
    row = dict(summary_rows(summary))["epochs / wall time (s)"]
    assert row == (f"2 / {summary['wall_time_s']:.1f} ({recorded:.1f} before the resume + "
                   f"{summary['wall_time_this_part_s']:.1f})")
    # the second part's checkpoint carries the total on
    total = next(v["wall_time_s"] for k, v in _load(tmp_path / "second" / "checkpoints" / "last.ckpt")["callbacks"]
                 .items() if "WallTime" in k)
    assert recorded < total <= summary["wall_time_s"]
