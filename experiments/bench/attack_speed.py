"""Benchmark: our PGD vs torchattacks' PGD on the same model, batch and steps.

Both attack the same CNN (model B on 1x28x28, batch 256, PGD-10 Linf) alternately, so machine
noise hits both alike; the median of ``--repeats`` calls each is compared. Writes the
``attack_speed`` section of ``experiments/bench/RESULTS.md``.

Usage:
    python experiments/bench/attack_speed.py [--repeats 15] [--batch 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import write_section

from lsa_train.attacks import PGD
from lsa_train.models import create_model

TARGET_RATIO = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import torchattacks

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(313)
    model = create_model("cnn_b", num_classes=10, in_channels=1, input_size=28).to(device).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    ours = PGD(eps=0.1, alpha=0.025, steps=args.steps)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=args.steps, random_start=True)

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"ours": [], "torchattacks": []}
    for _ in range(2):  # warm-up
        ours(model, x, y)
        theirs(x, y)
    for _ in range(args.repeats):
        times["ours"].append(timed(lambda: ours(model, x, y)))
        times["torchattacks"].append(timed(lambda: theirs(x, y)))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["torchattacks"]
    body = f"""## Attack speed: our PGD vs torchattacks 3.5.1 ({device})

Model B (cnn_b) on 1x28x28, batch {args.batch}, PGD-{args.steps} Linf eps 0.1 alpha 0.025 with random start,
{args.repeats} alternating calls each after 2 warm-up calls.

| implementation | median ms / call |
|---|---:|
| lsa_train.attacks.PGD | {med['ours'] * 1000:.1f} |
| torchattacks.PGD | {med['torchattacks'] * 1000:.1f} |

| target | value | bound | met |
|---|---:|---:|:---:|
| ours / torchattacks | {ratio:.3f} | <= {TARGET_RATIO} | {'yes' if ratio <= TARGET_RATIO else 'NO'} |
"""
    write_section(f"attack_speed_{device}", body)
    print(body)


if __name__ == "__main__":
    main()
