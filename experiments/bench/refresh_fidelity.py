"""Benchmark: how cheap can the MVL refresh be before it picks different layers?

Trains model B on the 8x8 digits with PGD-7 AT (the default run's setup, no LSA term, so
the model does not react to the MVL) and, after every epoch, analyses it with a reference
setting (every validation sample, PGD-20) and with cheaper candidates (fewer samples,
fewer attack steps). Per candidate it reports the Spearman rank correlation of the
per-probe mean CM with the reference, how often the MVL (eta 0.25, the app's rule) equals
the reference MVL, and the analysis time. Writes the ``refresh_fidelity`` section of RESULTS.md.

Usage:
    python experiments/bench/refresh_fidelity.py [--epochs 8] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import write_section

from lsa_train.analysis import compute_cm, select_mvl, select_probes
from lsa_train.attacks import PGD, create_attack
from lsa_train.data import DigitsDataModule
from lsa_train.models import create_model
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule

ETA = 0.25
REFERENCE = ("all", "pgd", {"steps": 20})
CANDIDATES = [
    (256, "pgd", {"steps": 5}),
    (128, "pgd", {"steps": 5}),
    (128, "pgd", {"steps": 3}),
    (64, "pgd", {"steps": 3}),
    (64, "pgd", {"steps": 5}),
    (256, "fgsm", {}),
    (128, "fgsm", {}),
]


def label(n: object, name: str, kwargs: dict) -> str:
    steps = f"-{kwargs['steps']}" if "steps" in kwargs else ""
    return f"{n} samples, {name.upper()}{steps}"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


class Snapshot(L.Callback):
    """Keeps a copy of the model's weights after every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def analyse(model, probes, x, y, n, name, kwargs, seed, eps) -> tuple[torch.Tensor, list[int], float]:
    xs, ys = (x, y) if n == "all" else (x[:n], y[:n])
    start = time.perf_counter()
    if name == "pgd":  # steps of eps / 4, as recorded (and as MVLRefreshCallback uses)
        kwargs = {"alpha": eps / 4, **kwargs}
    x_adv = create_attack(name, eps=eps, seed=seed, **kwargs)(model, xs, ys)
    cm = compute_cm(model, probes, xs, x_adv)
    seconds = time.perf_counter() - start
    return cm.mean(0), select_mvl(cm, eta=ETA), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--model", default="cnn_b", help="a registry name, e.g. resnet18 (more probes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, dict[str, list[float]]] = {label(*c): {"rho": [], "same": [], "s": []} for c in CANDIDATES}
    num_probes = 0
    for seed in range(args.seeds):
        L.seed_everything(seed)
        dm = DigitsDataModule(batch_size=64, seed=seed)
        dm.setup("fit")
        model = create_model(args.model, **dm.model_kwargs())
        module = LSARegularizedModule(model, attack=PGD(eps=args.eps, steps=7), regularizer=LayerwiseRegularizer(0.0))
        snapshots = Snapshot()
        L.Trainer(
            accelerator="cpu", max_epochs=args.epochs, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[snapshots], limit_val_batches=0,
            default_root_dir="/tmp/lsa_fidelity_bench",
        ).fit(module, dm)
        x, y = dm.analysis_subset(len(dm.val_set))
        probes = select_probes(model, x[:1])
        num_probes = len(probes)
        for epoch, state in enumerate(snapshots.states):
            model.load_state_dict(state)
            ref_means, ref_mvl, _ = analyse(model, probes, x, y, *REFERENCE, seed=epoch, eps=args.eps)
            for n, name, kwargs in CANDIDATES:
                means, mvl, seconds = analyse(model, probes, x, y, n, name, kwargs, seed=epoch, eps=args.eps)
                row = rows[label(n, name, kwargs)]
                row["rho"].append(spearman(means, ref_means))
                row["same"].append(float(mvl == ref_mvl))
                row["s"].append(seconds)
    lines = "\n".join(
        f"| {name} | {statistics.mean(r['rho']):.3f} | {min(r['rho']):.3f} | {100 * statistics.mean(r['same']):.0f} % "
        f"| {1000 * statistics.median(r['s']):.1f} |"
        for name, r in rows.items()
    )
    runs = args.seeds * args.epochs
    section = "refresh_fidelity" if args.model == "cnn_b" else f"refresh_fidelity_{args.model}"
    body = f"""## MVL refresh: cheaper analyses vs a reference ({args.model}, {num_probes} probes)

Model `{args.model}` on the 8x8 digits, PGD-7 AT at eps {args.eps} (no LSA term), analysed after each of
{args.epochs} epochs for {args.seeds} seeds ({runs} models). Reference: all {len(x)} validation samples, PGD-20.
Per candidate: Spearman rank correlation of the per-probe mean CM with the reference (mean and worst), share
of models whose MVL
(eta {ETA}) equals the reference MVL, and the median time of attack + CM on one thread.

| candidate | rank corr. mean | worst | same MVL | ms |
|---|---:|---:|---:|---:|
{lines}
"""
    write_section(section, body)
    print(body)


if __name__ == "__main__":
    main()
