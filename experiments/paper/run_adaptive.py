"""Issue 21: does the digits gain of the LSA term survive attacks that know it?

Trains the digits models (sklearn 8x8 digits, eps 0.2, 40 epochs, the settings of ``run_digits.py --part
bases``) and evaluates each one on the whole test split with the worst case per sample over: PGD-20,
AutoAttack (APGD-CE + APGD-T), PGD-20 on cross-entropy with 5 restarts, PGD-20 on the margin (CW) loss
with 5 restarts, a feature-level PGD-20 on cross-entropy + kappa x lambda x the relative error at the
regularized probe (kappa 1, 10; lambda that of the run whose term is attacked, so kappa 1 is its training
term) and a transfer attack from the paired run of the same seed. Each attack has its own seed (derived from
the run's seed and its name), so none retraces PGD. The records of Tables A1/A2 (evaluated at b9dde7c and
f7d675a) predate this: kappa 0, 1, 10 unweighted, with kappa 0 and the first restart of PGD-CE x5 on PGD's
own random start (kappa 0 was PGD's examples exactly).

Parts (``--part``), each a list of pairs (base, with the term) trained for every seed:

* ``pairs``: MART and PGD bases with their LR-L0 rows on model B (``cnn_b``), and TRADES+AWP's.
* ``arch2``: the same MART and PGD pairs on model A (``mlp_a``, 3 x Linear-ELU on the flattened image): no
  convolution, so the first layer sees every pixel through a dense map.
* ``conditions``: on MART and model B, lambda 0.3 and 3, the probe (the automatic MVL, top-1, refreshed every
  5 epochs; the deepest activation ``L3``), and the weakened training attack (``clip=forward``: the inner
  attack clamps inside the forward, so it cannot push the blank background) with and without the term.
* ``variants``: on MART and PGD, the term with the clean branch as a constant (``stop_clean_grad``) and the
  term normalized by the distance between different clean samples (``relative_error_pairwise``).

Each network is evaluated once. A run with the term is attacked at the probes it regularized (its final MVL)
and by transfer from its base run of the same seed; a base run at the probe of its main LR-L0 partner
(lambda 1, the first activation) and by transfer from that partner, so the two runs of a main pair face the
same attack set (for the other conditions the base keeps the L0 attack set).

Trained networks go to ``results/adaptive/models/`` (not committed); one JSON per (run, seed) to
``results/raw_adaptive/`` with the commits that trained and evaluated it. ``make_tables.py`` turns them
into the tables of ``RESULTS.md``. Finished runs are skipped.

Example:
    python experiments/paper/run_adaptive.py --part pairs --seeds 0 1 2 3 4
    python experiments/paper/run_adaptive.py --part conditions --only AT-MART+clip-forward-LR-L0_lam1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from paper_common import (
    EPS_GRID,
    RunConfig,
    TrainSettings,
    _jsonable,
    command_line,
    git_state,
    machine_info,
    train_model,
    write_json,
)

from lsa_train.analysis import select_probes
from lsa_train.data import DigitsDataModule
from lsa_train.evaluation import evaluate_robustness
from lsa_train.evaluation.adaptive import adaptive_attacks
from lsa_train.models import create_model

HERE = Path(__file__).resolve().parent
AWP_GAMMA = 5e-3
KAPPAS: tuple[float, ...] = (1.0, 10.0)


@dataclass(frozen=True)
class Pair:
    """A base run and the same run with the LSA term, on one architecture."""

    model: str
    base: RunConfig
    lr: RunConfig

    @property
    def label(self) -> str:
        return f"{self.model}: {self.lr.name} (lambda {self.lr.lam:g}) vs {self.base.name}"


def _pair(model: str, base: str, lr: str = "L0", lam: float = 1.0, **variant: Any) -> Pair:
    awp = variant.pop("awp", 0.0)
    clip = variant.pop("clip", "project")
    return Pair(model, RunConfig(base, awp=awp, clip=clip), RunConfig(base, lr, lam, awp, clip=clip, **variant))


PARTS: dict[str, list[Pair]] = {
    "pairs": [_pair("cnn_b", "mart"), _pair("cnn_b", "pgd"), _pair("cnn_b", "trades", awp=AWP_GAMMA)],
    "arch2": [_pair("mlp_a", "mart"), _pair("mlp_a", "pgd")],
    "conditions": [
        _pair("cnn_b", "mart", lam=0.3), _pair("cnn_b", "mart", lam=3.0),
        _pair("cnn_b", "mart", lr="auto"), _pair("cnn_b", "mart", lr="L3"),
        _pair("cnn_b", "mart", clip="forward"),
    ],
    "variants": [
        _pair("cnn_b", "mart", stop_clean_grad=True), _pair("cnn_b", "mart", measure="relative_error_pairwise"),
        _pair("cnn_b", "pgd", stop_clean_grad=True), _pair("cnn_b", "pgd", measure="relative_error_pairwise"),
    ],
}


@dataclass
class EvalSettings:
    """The evaluation of every run (whole test split, eps of the training)."""

    eps: float = 0.2
    pgd_steps: int = 20
    restarts: int = 5
    kappas: tuple[float, ...] = KAPPAS
    autoattack_attacks: tuple[str, ...] = ("apgd-ce", "apgd-t")
    masking_square_queries: int | None = None
    max_samples: int | None = None


#: ``--quick``: seconds per run, for the script's own test.
QUICK_EVAL = {"pgd_steps": 3, "restarts": 1, "kappas": (10.0,), "autoattack_attacks": ("apgd-ce",),
              "max_samples": 32}


def settings_for(model: str, epochs: int, eps: float) -> TrainSettings:
    """The training settings of ``run_digits.py --part bases`` for ``model``."""
    return TrainSettings(model=model, epochs=epochs, lr=1e-3, batch_size=64, eps=eps, attack_steps=10,
                         aa_samples=0, masking_checks=False)


def run_key(model: str, cfg: RunConfig, seed: int) -> str:
    return f"{model}__{cfg.run_id}__s{seed}"


def make_dm(seed: int) -> DigitsDataModule:
    return DigitsDataModule(batch_size=64, seed=seed)


def _same(path: Path, key: str, value: Any) -> bool:
    return path.exists() and json.loads(path.read_text()).get(key) == value


# -- training ---------------------------------------------------------------------------------------
def train_one(model: str, cfg: RunConfig, seed: int, settings: TrainSettings, out: Path) -> dict[str, Any]:
    """Trains (unless saved with these settings) and returns the training record."""
    key = run_key(model, cfg, seed)
    record_path, weights = out / "adaptive" / "train" / f"{key}.json", out / "adaptive" / "models" / f"{key}.pt"
    wanted = _jsonable(asdict(settings))
    if weights.exists() and _same(record_path, "settings", wanted):
        return json.loads(record_path.read_text())
    trained = train_model(cfg, settings, make_dm, seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trained.module.model.state_dict(), weights)
    record = {
        "key": key, "model": model, "run_id": cfg.run_id, "name": cfg.name, "config": asdict(cfg), "seed": seed,
        "settings": wanted, "git": git_state(), "mvl": list(trained.module.mvl),
        "mvl_history": trained.refresher.history if trained.refresher is not None else None,
        "probes": [p.name for p in trained.module.probes or []],
        "train_seconds": round(trained.train_seconds, 2),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(record_path, record)
    print(f"trained {key} in {record['train_seconds']} s, MVL {record['mvl']}", flush=True)
    return record


def load_network(model: str, key: str, out: Path) -> torch.nn.Module:
    """The saved network of ``key`` (weights only), in eval mode."""
    net = create_model(model, **make_dm(0).model_kwargs())
    net.load_state_dict(torch.load(out / "adaptive" / "models" / f"{key}.pt", map_location="cpu", weights_only=True))
    return net.eval()


# -- evaluation -------------------------------------------------------------------------------------
def main_partner(base: RunConfig) -> RunConfig:
    """The LR-L0 (lambda 1) run of a base run: its transfer source and feature-attack probe."""
    return RunConfig(base.base, "L0", 1.0, base.awp, clip=base.clip)


def evaluate_one(
    pair: Pair, which: str, seed: int, records: dict[str, dict[str, Any]], settings: EvalSettings, out: Path
) -> dict[str, Any]:
    """The adaptive evaluation of the ``which`` (``base`` or ``lr``) run of ``pair`` for ``seed``."""
    cfg, partner = (pair.base, main_partner(pair.base)) if which == "base" else (pair.lr, pair.base)
    key, partner_key = run_key(pair.model, cfg, seed), run_key(pair.model, partner, seed)
    path = out / "raw_adaptive" / f"digits__{key}.json"
    regularized = partner if which == "base" else cfg
    measure = regularized.measure  # the feature attack compares as the term it attacks did
    wanted = {**_jsonable(asdict(settings)), "transfer_from": partner_key}
    if measure != "relative_error":  # records of relative-error runs keep their settings
        wanted["feature_measure"] = measure
    wanted["feature_weights"] = regularized.lam  # the feature term is weighted as the attacked term was
    if _same(path, "eval_settings", wanted):
        return json.loads(path.read_text())
    dm = make_dm(seed)
    dm.setup()
    net = load_network(pair.model, key, out)
    example = next(iter(dm.test_dataloader()))[0][:1]
    mvl = records[run_key(pair.model, regularized, seed)]["mvl"]  # the probes the term regularized
    probes = [p for p in select_probes(net, example, "activations") if p.name in mvl]
    attacks = adaptive_attacks(settings.eps, steps=settings.pgd_steps, restarts=settings.restarts,
                               kappas=settings.kappas, probes=probes, weights=regularized.lam, seed=seed,
                               measure=measure,
                               transfer_source=load_network(pair.model, partner_key, out), transfer_name=partner_key)
    started = time.perf_counter()
    report = evaluate_robustness(
        net, dm.test_dataloader(), settings.eps, eps_grid=EPS_GRID, pgd_steps=settings.pgd_steps,
        autoattack_version="custom", autoattack_attacks=list(settings.autoattack_attacks), autoattack_samples=None,
        extra_attacks=attacks, masking_kwargs={"square_queries": settings.masking_square_queries}, seed=seed,
        model_name=pair.model, max_samples=settings.max_samples,
    )
    seconds = time.perf_counter() - started
    train = records[key]
    record = {
        "dataset": "digits", "key": key, "model": pair.model, "run_id": cfg.run_id, "name": cfg.name,
        "pair": pair.label, "role": which, "partner": partner_key, "config": asdict(cfg), "seed": seed,
        "train": train, "eval_settings": wanted, "eval_git": git_state(),
        "clean": report.clean_accuracy, "fgsm": {f"{e:g}": a for e, a in report.fgsm_sweep.items()},
        "rg": report.rg_score, "pgd": report.pgd_accuracy, "autoattack": report.autoattack_accuracy,
        "worst_case_accuracy": report.worst_case_accuracy, "worst_case": report.worst_case,
        "attacks": report.attacks, "skipped_attacks": report.skipped_attacks, "masking_warnings": report.warnings,
        "feature_probes": [p.name for p in probes], "eval_seconds": round(seconds, 2),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(path, record)
    print(f"evaluated {key}: clean {report.clean_accuracy:.3f} worst case {report.worst_case_accuracy:.3f} "
          f"({seconds:.0f} s)", flush=True)
    return record


def run_part(
    part: str, pairs: Sequence[Pair], seeds: Sequence[int], epochs: int, eps: float, out: Path, quick: bool = False
) -> None:
    """Trains every run of ``pairs`` for every seed, then evaluates them; writes ``meta_adaptive_<part>.json``."""
    evaluation = EvalSettings(eps=eps, **(QUICK_EVAL if quick else {}))
    start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    records: dict[str, dict[str, Any]] = {}
    for pair in pairs:  # pair-major: an interrupted part leaves whole pairs
        settings = settings_for(pair.model, epochs, eps)
        for seed in seeds:
            for cfg in dict.fromkeys((pair.base, pair.lr, main_partner(pair.base))):
                records[run_key(pair.model, cfg, seed)] = train_one(pair.model, cfg, seed, settings, out)
        for seed in seeds:
            for which in ("base", "lr"):
                evaluate_one(pair, which, seed, records, evaluation, out)
    meta = {"part": part, "command": command_line(), "pairs": [p.label for p in pairs], "seeds": list(seeds),
            "epochs": epochs, "eps": eps, "eval_settings": _jsonable(asdict(evaluation)),
            "machine": machine_info(), "started": started, "wall_seconds": round(time.perf_counter() - start, 1)}
    path = out / f"meta_adaptive_{part}.json"
    if path.exists():
        previous = json.loads(path.read_text())
        meta["previous"] = [*previous.pop("previous", []), previous]
    write_json(path, meta)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", metavar="RUN_ID", help="only the pairs whose LR run_id is listed")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny evaluation (use with --epochs 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = PARTS[args.part]
    if args.only:
        known = {p.lr.run_id for p in pairs}
        if set(args.only) - known:
            raise SystemExit(f"--only: unknown run ids {sorted(set(args.only) - known)}; part {args.part} has "
                             f"{sorted(known)}")
        pairs = [p for p in pairs if p.lr.run_id in args.only]
    run_part(args.part, pairs, args.seeds, args.epochs, args.eps, args.out, quick=args.quick)


if __name__ == "__main__":
    main()
