"""Table 3 analog of the LSA paper on sklearn digits (8x8) with model B: Normal, AT-APGD, AT-APGD-LR-L0,
and (``--part bases``) the other base defenses AT-PGD, AT-PGD+AWP, AT-MART, AT-TRADES+AWP with their LR-L0 rows
(plus AT-TRADES, AWP's reference for TRADES).

The paper's Table 3 is MNIST (28x28) with model B; this CPU-sized analog uses the 8x8 digits
(1797 images, 60/20/20 split) with the same architecture (``cnn_b``, padded for 8x8 inputs) and
the same FGSM grid. One JSON per (config, seed) goes to ``<out>/raw/``; finished runs are skipped.

Example:
    python experiments/paper/run_digits.py --seeds 0 1 2 --epochs 30
    python experiments/paper/run_digits.py --part bases --seeds 0 1 2 3 4 --epochs 40
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from paper_common import RunConfig, TrainSettings, command_line, run_grid

from lsa_train.data import DigitsDataModule

HERE = Path(__file__).resolve().parent
MAIN_LAMBDA = 1.0
#: AWP gamma of the ``bases`` part (the reference implementation's value).
AWP_GAMMA = 5e-3


def configs(lam: float = MAIN_LAMBDA, base: str = "apgd") -> list[RunConfig]:
    """Normal, AT-APGD and AT-APGD-LR-L0 (the paper's MNIST rows)."""
    return [RunConfig("normal"), RunConfig(base), RunConfig(base, "L0", lam)]


def base_configs(lam: float = MAIN_LAMBDA, awp: float = AWP_GAMMA) -> list[RunConfig]:
    """AT-PGD, AT-PGD+AWP, AT-MART, AT-TRADES+AWP, each followed by its LR-L0 variant, then plain AT-TRADES
    (the reference that AT-TRADES+AWP is paired with)."""
    bases = [RunConfig("pgd"), RunConfig("pgd", awp=awp), RunConfig("mart"), RunConfig("trades", awp=awp)]
    return [*(row for b in bases for row in (b, RunConfig(b.base, "L0", lam, b.awp))), RunConfig("trades")]


def make_datamodule(batch_size: int):
    """A factory ``seed -> DigitsDataModule`` (split and shuffle order depend on the seed)."""

    def make(seed: int) -> DigitsDataModule:
        return DigitsDataModule(batch_size=batch_size, seed=seed)

    return make


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("main", "bases"), default="main", help="main: the paper's rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", metavar="RUN_ID", help="run only these configs (e.g. AT-MART)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 seed, 1 epoch, tiny eval")
    parser.add_argument("--eps", type=float, default=0.2, help="training eps ([0,1] pixel units)")
    parser.add_argument("--lam", type=float, default=MAIN_LAMBDA, help="lambda of the LR-L0 term")
    parser.add_argument("--base", choices=("apgd", "pgd"), default="apgd")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--aa-samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = TrainSettings(
        model="cnn_b",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        eps=args.eps,
        attack_steps=10,
        pgd_eval_eps=tuple(sorted({0.1, args.eps})),
        aa_eps=args.eps,
        aa_samples=args.aa_samples,
        aa_version="custom",
        aa_attacks=("apgd-ce", "apgd-t", "square"),
        aa_square_queries=1000,
        extra={"main_lambda": args.lam},
    )
    runs = configs(args.lam, args.base) if args.part == "main" else base_configs(args.lam)
    if args.only:
        unknown = sorted(set(args.only) - {c.run_id for c in runs})
        if unknown:
            raise SystemExit(f"--only: unknown run ids {unknown}; part {args.part!r} has {[c.run_id for c in runs]}")
        runs = [c for c in runs if c.run_id in args.only]
    seeds = args.seeds
    if args.quick:
        seeds, settings.epochs = seeds[:1], min(args.epochs, 1)
        settings.aa_samples, settings.pgd_eval_steps = min(args.aa_samples, 16), 2
        settings.aa_attacks, settings.masking_checks = ("apgd-ce",), False
        runs = runs[1:] if args.part == "main" else runs
    tag = "all" if args.part == "main" else args.part
    run_grid(
        "digits", runs, seeds, settings, make_datamodule(args.batch_size), args.out, command=command_line(), tag=tag
    )


if __name__ == "__main__":
    main()
