"""Table 2 of the LSA paper on two moons with model A: base AT methods with and without layer-wise LR.

Runs every (config, seed), saving one JSON per run under ``<out>/raw/`` (finished runs are
skipped, so an interrupted run resumes), plus a lambda sweep for AT-PGD-LR-L2 / AT-FGSM-LR-L2.

Example:
    python experiments/paper/run_moons.py --seeds 0 1 2 --epochs 30
    python experiments/paper/run_moons.py --quick --out /tmp/moons_quick
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from paper_common import RunConfig, TrainSettings, command_line, run_grid

from lsa_train.data import MoonsDataModule

HERE = Path(__file__).resolve().parent
BASES = ("fgsm", "pgd", "trades", "fast")
MAIN_LAMBDA = 1.0
LAMBDAS = (0.01, 0.1, 1.0, 3.0, 10.0)


def main_configs(full: bool = False, lam: float = MAIN_LAMBDA) -> list[RunConfig]:
    """Normal, the four base AT methods and their LR variants, in priority order (runs go in this order).

    LR-L2 and the automatic MVL run for every base; LR-L0/L1 for AT-FGSM and AT-PGD only, or for
    every base with ``full``.
    """
    configs = [RunConfig("normal"), *(RunConfig(base) for base in BASES)]
    configs += [RunConfig(base, "L2", lam) for base in BASES]
    configs += [RunConfig(base, "auto", lam) for base in BASES]
    for base in BASES if full else ("fgsm", "pgd"):
        configs += [RunConfig(base, "L0", lam), RunConfig(base, "L1", lam)]
    return configs


def sweep_configs(bases: Sequence[str] = ("pgd", "fgsm"), lambdas: Sequence[float] = LAMBDAS) -> list[RunConfig]:
    """The lambda sweep of ``<base>-LR-L2``."""
    return [RunConfig(base, "L2", lam) for base in bases for lam in lambdas]


def make_datamodule(batch_size: int, n_samples: int, n_test: int):
    """A factory ``seed -> MoonsDataModule`` (the data draw and split depend on the seed)."""

    def make(seed: int) -> MoonsDataModule:
        return MoonsDataModule(n_samples=n_samples, n_test=n_test, noise=0.1, batch_size=batch_size, seed=seed)

    return make


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 seed, 1 epoch, 2 configs, tiny eval")
    parser.add_argument("--eps", type=float, default=0.1, help="training eps ([0,1]-scaled inputs)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--aa-samples", type=int, default=200)
    parser.add_argument("--aa-square-queries", type=int, default=1000)
    parser.add_argument("--full", action="store_true", help="LR-L0/L1 for every base (default: AT-FGSM/AT-PGD)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=("all", "main", "sweep"), default="all")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n_samples, n_test = 2000, 1000
    settings = TrainSettings(
        model="mlp_a",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        eps=args.eps,
        attack_steps=10,
        pgd_eval_eps=(0.1, 0.2),
        aa_eps=args.eps,
        aa_samples=args.aa_samples,
        aa_version="standard",
        aa_square_queries=args.aa_square_queries,
    )
    configs = main_configs(args.full) if args.part in ("all", "main") else []
    if args.part in ("all", "sweep"):  # the lambda = MAIN_LAMBDA runs belong to the main table
        configs += [c for c in sweep_configs() if c.lam != MAIN_LAMBDA]
    seeds = args.seeds
    if args.quick:
        seeds, settings.epochs = seeds[:1], min(args.epochs, 1)
        settings.aa_samples, settings.pgd_eval_steps = min(args.aa_samples, 16), 2
        settings.aa_version, settings.aa_attacks = "custom", ("apgd-ce",)
        settings.masking_checks = False
        n_samples, n_test = 200, 100
        configs = [RunConfig("pgd"), RunConfig("pgd", "L2", MAIN_LAMBDA)]
    settings.extra = {"n_samples": n_samples, "n_test": n_test, "noise": 0.1, "main_lambda": MAIN_LAMBDA}
    run_grid(
        "moons",
        configs,
        seeds,
        settings,
        make_datamodule(args.batch_size, n_samples, n_test),
        args.out,
        command=command_line(),
        tag=args.part,
    )


if __name__ == "__main__":
    main()
