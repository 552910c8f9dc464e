"""The GPU benchmark must not rot on machines without a GPU: its smoke mode runs every configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "experiments" / "bench"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the smoke run would not be a CPU run")
def test_gpu_epoch_smoke_runs_all_four_configurations() -> None:
    results = BENCH_DIR / "RESULTS.md"
    before = results.read_text() if results.exists() else None
    out = subprocess.run(
        [sys.executable, str(BENCH_DIR / "gpu_epoch.py"), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "s/epoch" in line]
    assert [line.split(":")[0] for line in lines] == [
        "PGD-10 AT, fp32", "AT-LR, fp32", "PGD-10 AT, bf16 + channels_last", "AT-LR, bf16 + channels_last",
    ]
    assert (results.read_text() if results.exists() else None) == before  # a smoke run records nothing


def test_gpu_epoch_without_a_gpu_leaves_results_alone() -> None:
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    out = subprocess.run([sys.executable, str(BENCH_DIR / "gpu_epoch.py")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "no CUDA device" in out.stdout
