"""Checkpoints of ``python -m lsa_train`` runs, in subprocesses: ``last.ckpt`` is the last epoch even when
it is not the best, and a run with data-loader workers and random augmentation, SIGKILLed and resumed,
ends bit-identical to the uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

HERE = Path(__file__).parent

#: A few batches per epoch, no figures, no loggers, no rich output.
QUICK = [
    "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
    "regularizer.mvl.plot=false", "logger=none", "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
]


def run_app(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m lsa_train`` in ``run_dir``'s parent, with this folder's callbacks importable."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "lsa_train", *QUICK, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.slow
def test_last_ckpt_holds_the_last_epoch_when_it_is_not_the_best(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # a monitor that gets worse every epoch (the global step, mode min): epoch 0 stays the best one
    result = run_app(run_dir, "++trainer.limit_train_batches=4", "trainer.max_epochs=2",
                     "regularizer.mvl.num_samples=32", "callbacks.model_checkpoint.monitor=step",
                     "callbacks.model_checkpoint.mode=min", "+callbacks.final._target_=final_weights.FinalWeights",
                     f"+callbacks.final.path={tmp_path / 'final.pt'}")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    best, last = checkpoints / "epoch_000.ckpt", checkpoints / "last.ckpt"
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["best_checkpoint"] == str(best) and summary["tested_checkpoint"] == str(last)
    assert summary["last_checkpoint"] == str(last)
    final = load(tmp_path / "final.pt")
    saved = load(last)
    assert (saved["epoch"], saved["global_step"]) == (1, 8) == (final["epoch"] - 1, final["global_step"])
    assert_same_weights(saved["state_dict"], final["state_dict"])
    best_weights = load(best)["state_dict"]
    assert load(best)["global_step"] == 4
    assert any(not torch.equal(best_weights[k], v) for k, v in final["state_dict"].items())
    # the summary prints the paths the next command needs whole, however long
    assert f"last checkpoint: {last}" in result.stdout and f"run dir: {run_dir}" in result.stdout
    assert f"best checkpoint: {best}" in result.stdout


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 12) -> None:
    """``root/train/c<k>/<i>.png``: grey images whose brightness depends on the class."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        folder = root / "train" / f"c{k}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size, size)) + 70 * k
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")


@pytest.mark.slow
def test_resume_with_workers_and_augmentation_is_exact(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images")
    # 2 persistent workers (the imagefolder default) drawing random crops and flips; 4 batches per epoch
    run = ["data=imagefolder", f"data.root={tmp_path / 'images'}", "data.num_workers=2", "data.pin_memory=false",
           "data.persistent_workers=true", "data.augment=true", "data.batch_size=8", "trainer.max_epochs=3",
           "regularizer.mvl.num_samples=4", "attack.steps=2"]
    full = run_app(tmp_path / "full", *run)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_app(tmp_path / "killed", *run, "+callbacks.kill._target_=kill_switch.KillAt",
                     "+callbacks.kill.epoch=1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert load(last)["epoch"] == 0
    resumed = run_app(tmp_path / "killed", *run, f"ckpt_path={last}", "+callbacks.kill=null")  # drop the kill switch
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load(tmp_path / "full" / "checkpoints" / "last.ckpt")
    got = load(last)
    assert got["epoch"] == expected["epoch"] == 2
    assert_same_weights(got["state_dict"], expected["state_dict"])
