"""Benchmark: ``import lsa_train`` time and the wall time of the default ``python -m lsa_train`` run.

Each measured in fresh subprocesses (median of ``--repeats`` imports; one default run, whose
outputs go to a temporary folder). Writes the ``startup`` section of RESULTS.md.

Usage:
    python experiments/bench/startup.py [--repeats 5] [--skip-run]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import write_section

IMPORT_TARGET_S = 3.0
RUN_TARGET_S = 90.0


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import lsa_train; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def default_run_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "lsa_train", f"hydra.run.dir={tmp}/run"], check=True, capture_output=True, text=True
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()
    imports = statistics.median(import_seconds() for _ in range(args.repeats))
    rows = [f"| `import lsa_train` (median of {args.repeats}) | {imports:.2f} | < {IMPORT_TARGET_S:.0f} | "
            f"{'yes' if imports < IMPORT_TARGET_S else 'NO'} |"]
    if not args.skip_run:
        run = default_run_seconds()
        rows.append(f"| `python -m lsa_train` (default run, wall) | {run:.1f} | < {RUN_TARGET_S:.0f} | "
                    f"{'yes' if run < RUN_TARGET_S else 'NO'} |")
    body = "## Start-up and the default run (cpu)\n\n| measure | seconds | target | met |\n|---|---:|---:|:---:|\n"
    body += "\n".join(rows) + "\n"
    write_section("startup", body)
    print(body)


if __name__ == "__main__":
    main()
