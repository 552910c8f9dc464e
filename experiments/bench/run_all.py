"""Regenerates ``experiments/bench/RESULTS.md``: every benchmark, each target next to its ratio.

Runs each benchmark script in its own process (each rewrites its own section). On a machine
with a CUDA GPU it also records the GPU sections: the training step on the GPU and the
ResNet-18 CIFAR-10-sized PGD-10 AT epoch with and without LR, fp32 and bf16 + channels_last.

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
        ["lsa_analysis.py", "--calls", "10" if quick else "20"],
        ["attack_speed.py", "--repeats", "5" if quick else "15"],
        ["train_step.py", "--device", "cpu", "--steps", "12" if quick else "25", "--warmup", "3"],
        ["refresh_overhead.py", "--epochs", "4" if quick else "8"],
        ["refresh_fidelity.py", "--epochs", "3" if quick else "6", "--seeds", "2" if quick else "3"],
        ["startup.py"],
    ]
    if torch.cuda.is_available():
        jobs.append(["train_step.py", "--device", "cuda", "--model", "preact_resnet18", "--steps", "30"])
        jobs.append(["gpu_epoch.py", "--samples", "10000" if quick else "50000"])
    for script, *options in jobs:
        print(f"== {script} {' '.join(options)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *options], check=True)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
