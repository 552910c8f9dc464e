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


def test_train_step_variant_rows_run_against_their_bases() -> None:
    """The issue-21 rows of train_step.py (LR-L0 variants on the digits' MART-7 and PGD-7) build and train,
    each timed against its own base."""
    sys.path.insert(0, str(BENCH_DIR))
    threads = torch.get_num_threads()
    try:
        import train_step

        names = list(train_step.VARIANT_CONFIGS)
        times = train_step.interleaved_step_times("cnn_b", 4, 3, "cpu", names, input_size=8)
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH_DIR))
    assert set(times) == set(names)
    assert {train_step.base_of(n) for n in names} == {"pgd7", "mart7"}
    for base in ("pgd7", "mart7"):
        assert times[base][1] == 1.0  # a base's ratio to itself
    assert all(median > 0 and ratio > 0 for median, ratio in times.values())
    assert train_step.base_of("trades") == "pgd10_at"  # the other rows keep PGD-10 AT as their base
