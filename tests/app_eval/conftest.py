"""Fixtures of the evaluate/analyze app tests: one tiny training run, made once per module."""

from __future__ import annotations

from pathlib import Path

import pytest
from evaltest_utils import run_module

#: A real (not fast_dev_run) but tiny training run: checkpoints and .hydra/config.yaml are written.
TINY_TRAIN = [
    "trainer.max_epochs=1", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "regularizer.mvl.num_samples=32",
    "callbacks.rich_model_summary=null", "logger=none",
]


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of ``python -m lsa_train`` (digits, model B, PGD-AT + LSA); returns its run dir."""
    root = tmp_path_factory.mktemp("train")
    run_dir = root / "run"
    proc = run_module("lsa_train", [*TINY_TRAIN, f"hydra.run.dir={run_dir}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    return run_dir
