"""``lsa-trust <run> ...``: sign run folders you have read and accept as your own (like ``jupyter trust``).

A signed run's saved config is honoured as written by ``lsa-train ckpt_path=...``, ``lsa-evaluate`` and
``lsa-analyze`` (its ``_target_`` values and interpolations included); any other run folder is read as data
(:mod:`lsa_train.foreign`). Runs you train are signed when they start, so this is for runs from elsewhere
(after reading their ``.hydra/config.yaml``) and for your own runs edited by hand or signed with an earlier key.

Examples:
    lsa-trust logs/train/runs/2026-12-05_10-00-00             sign one run folder
    lsa-trust logs/train/multiruns/2026-12-05_10-00-00        sign every job of a multirun
    lsa-trust --check logs/train/runs/2026-12-05_10-00-00     only say whether it is signed (exit 1 if not)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lsa_train.signing import RUN_CONFIG, SigningError, key_path, sign_run, verify_run
from lsa_train.writes import check_run_folder_links

PROG = "lsa-trust"


def run_folders(path: Path) -> list[Path]:
    """``path`` when it is a run folder, else the run folders directly below it (the jobs of a multirun).

    Raises:
        SigningError: Neither.
    """
    if (path / RUN_CONFIG).is_file():
        return [path]
    jobs = sorted(p for p in path.iterdir() if (p / RUN_CONFIG).is_file()) if path.is_dir() else []
    if not jobs:
        kind = "does not exist" if not path.exists() else "is not a run folder (no .hydra/config.yaml) or a multirun"
        raise SigningError(f"'{path}' {kind}; give a run folder written by lsa-train")
    return jobs


def _targets(run: Path) -> list[str]:
    from omegaconf import OmegaConf

    from lsa_train.trust import _walk_targets

    cfg = OmegaConf.load(run / RUN_CONFIG)
    return sorted({str(target) for _, target, _ in _walk_targets(cfg, "")})


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2: a bad folder; 1: ``--check`` found a foreign run)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or multirun folders) to sign")
    parser.add_argument("--check", action="store_true", help="only report whether each run is signed")
    args = parser.parse_args(argv)
    try:
        folders = [run for path in args.runs for run in run_folders(path)]
        foreign = 0
        for run in folders:
            verdict = verify_run(run)
            if args.check:
                foreign += not verdict.signed
                print(f"{run}: " + ("signed by you" if verdict.signed else f"foreign ({verdict.reason})"))
                continue
            check_run_folder_links(run)
            targets = ", ".join(_targets(run)) or "none"
            sign_run(run)
            print(f"{run}: signed with '{key_path()}' (its config's _target_ values: {targets})")
    except (SigningError, ValueError, OSError) as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 1 if foreign else 0


def console() -> None:
    """``lsa-trust`` console script."""
    raise SystemExit(main())


if __name__ == "__main__":
    console()
