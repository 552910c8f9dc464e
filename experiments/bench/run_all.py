"""Regenerates ``experiments/bench/RESULTS.md``: every benchmark, each target next to its ratio.

Runs each benchmark script in its own process (each rewrites its own section). On a machine
with a CUDA GPU the training-step and attack benchmarks also record a GPU section.

Usage:
    python experiments/bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier figures)")
    args = parser.parse_args()
    quick = args.quick
    jobs: list[list[str]] = [
        ["lsa_analysis.py", "--calls", "10" if quick else "30"],
        ["attack_speed.py", "--repeats", "5" if quick else "15"],
        ["train_step.py", "--device", "cpu", "--steps", "12" if quick else "25", "--warmup", "3"],
        ["refresh_overhead.py", "--epochs", "3"],
        ["startup.py"],
    ]
    if torch.cuda.is_available():
        jobs.append(["train_step.py", "--device", "cuda", "--model", "preact_resnet18", "--steps", "30"])
    for script, *options in jobs:
        print(f"== {script} {' '.join(options)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *options], check=True)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
