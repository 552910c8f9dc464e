"""Shared code of the paper-reproduction scripts: run configs, one train+evaluate run, raw JSON I/O.

Every run trains one model with :class:`lsa_train.training.LSARegularizedModule` on CPU, then
evaluates it on the test split with FGSM (the paper's R&G grid), PGD-20 and AutoAttack (on a
subset), and writes one small JSON file ``<out>/raw/<dataset>__<run_id>__s<seed>.json``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lsa_train.attacks import APGD, FGSM, FGSMRS, PGD, Attack, MARTAttack, TRADESAttack
from lsa_train.data.base import LSADataModule
from lsa_train.evaluation import autoattack_accuracy, fgsm_sweep, gradient_masking_checks, pgd_accuracy, rg_score
from lsa_train.models import create_model
from lsa_train.training import (
    AdversarialWeightPerturbation,
    LayerwiseRegularizer,
    LSARegularizedModule,
    MVLRefreshCallback,
)

#: The paper's FGSM grid for the R&G score (moons and MNIST tables).
EPS_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

#: Display name of every base training method.
BASE_NAMES = {
    "normal": "Normal",
    "fgsm": "AT-FGSM",
    "pgd": "AT-PGD",
    "trades": "AT-TRADES",
    "fast": "AT-FAST",
    "apgd": "AT-APGD",
    "mart": "AT-MART",
}


@dataclass(frozen=True)
class RunConfig:
    """One training configuration (a table row before averaging over seeds).

    Attributes:
        base: Base training: ``normal``, ``fgsm``, ``pgd``, ``trades``, ``fast``, ``apgd`` or ``mart``.
        lr: Layer-wise regularization: ``None`` (off), ``"L0"``/``"L1"``/``"L2"`` (fixed probe
            index) or ``"auto"`` (MVL re-picked by :class:`MVLRefreshCallback`, top-1 probe).
        lam: The regularizer weight lambda (gamma); ignored when ``lr`` is ``None``.
        awp: Adversarial Weight Perturbation gamma (``0``: off), e.g. ``5e-3``.
    """

    base: str
    lr: str | None = None
    lam: float = 1.0
    awp: float = 0.0
    clip: str = "project"
    measure: str = "relative_error"
    stop_clean_grad: bool = False

    @property
    def base_name(self) -> str:
        """Name of the base method, e.g. ``AT-PGD``, ``AT-PGD+AWP`` or ``AT-MART+clip-forward`` (the inner
        attack clamps inside the forward instead of projecting the iterate)."""
        clip = "" if self.clip == "project" else "+clip-forward"
        return BASE_NAMES[self.base] + ("+AWP" if self.awp else "") + clip

    @property
    def name(self) -> str:
        """Table name, e.g. ``AT-PGD-LR-L2``, ``AT-PGD+AWP-LR-L0``, ``AT-PGD-LR-auto``, or with a variant of the
        term ``AT-MART-LR-L0-sg`` (stop_clean_grad) / ``AT-MART-LR-L0-pw`` (relative_error_pairwise)."""
        if not self.lr:
            return self.base_name
        variant = ("-sg" if self.stop_clean_grad else "") + ("" if self.measure == "relative_error" else "-pw")
        return f"{self.base_name}-LR-{self.lr}{variant}"

    @property
    def run_id(self) -> str:
        """File-safe id that also names lambda, e.g. ``AT-PGD-LR-L2_lam1``."""
        return self.name + (f"_lam{self.lam:g}" if self.lr else "")


@dataclass
class TrainSettings:
    """Hyper-parameters shared by all runs of one script."""

    model: str
    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    eps: float = 0.1
    attack_steps: int = 10
    trades_beta: float = 6.0
    mart_beta: float = 6.0
    awp_warmup: int = 0
    mvl_refresh_every: int = 5
    mvl_samples: int = 256
    pgd_eval_eps: tuple[float, ...] = (0.1, 0.2)
    pgd_eval_steps: int = 20
    aa_eps: float = 0.1
    aa_samples: int = 200
    aa_version: str = "standard"
    aa_attacks: tuple[str, ...] | None = None
    aa_square_queries: int | None = None
    masking_checks: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def build_attack(base: str, eps: float, steps: int, clip: str = "project") -> Attack | None:
    """The training (inner maximization) attack of a base method; ``None`` for normal training.

    ``clip="forward"`` (PGD, TRADES, MART) clamps inside the forward instead of projecting the iterate to
    ``[0, 1]``: a weaker attack, for the ablation of issue 21."""
    if base == "normal":
        return None
    extra = {} if clip == "project" else {"clip": clip}
    factories = {
        "fgsm": lambda: FGSM(eps),
        "pgd": lambda: PGD(eps, steps=steps, **extra),
        "trades": lambda: TRADESAttack(eps, steps=steps, **extra),
        "fast": lambda: FGSMRS(eps),
        "apgd": lambda: APGD(eps, steps=steps),
        "mart": lambda: MARTAttack(eps, steps=steps, **extra),
    }
    if base not in factories:
        raise ValueError(f"unknown base method {base!r}; choose from {sorted(BASE_NAMES)}")
    if extra and base not in ("pgd", "trades", "mart"):
        raise ValueError(f"clip={clip!r} is only for the pgd, trades and mart bases, not {base!r}")
    return factories[base]()


def build_module(cfg: RunConfig, settings: TrainSettings, model: nn.Module) -> LSARegularizedModule:
    """The Lightning module of one run (validation attacks off: no model selection is done)."""
    attack = build_attack(cfg.base, settings.eps, settings.attack_steps, cfg.clip)
    base_loss = {"normal": "normal", "trades": "trades", "mart": "mart"}.get(cfg.base, "ce")
    regularizer = (LayerwiseRegularizer(gamma=cfg.lam, measure=cfg.measure, stop_clean_grad=cfg.stop_clean_grad)
                   if cfg.lr else None)
    mvl = [int(cfg.lr[1:])] if cfg.lr and cfg.lr.startswith("L") else None
    return LSARegularizedModule(
        model,
        attack=attack,
        base_loss=base_loss,
        regularizer=regularizer,
        optimizer=functools.partial(torch.optim.Adam, lr=settings.lr),
        mvl=mvl,
        probes="activations",
        trades_beta=settings.trades_beta,
        mart_beta=settings.mart_beta,
        awp=AdversarialWeightPerturbation(cfg.awp, settings.awp_warmup) if cfg.awp else None,
    )


def _test_tensors(dm: LSADataModule) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[(x, y) for x, y in dm.test_dataloader()])
    return torch.cat(xs), torch.cat(ys)


def evaluate(model: nn.Module, dm: LSADataModule, settings: TrainSettings, seed: int) -> dict[str, Any]:
    """FGSM sweep + R&G, PGD at every ``pgd_eval_eps``, AutoAttack on the first ``aa_samples`` test points."""
    model.eval()
    loader = dm.test_dataloader()
    sweep = fgsm_sweep(model, loader, EPS_GRID)
    pgd = {
        e: pgd_accuracy(model, loader, eps=e, steps=settings.pgd_eval_steps, seed=seed) for e in settings.pgd_eval_eps
    }
    result: dict[str, Any] = {
        "clean": sweep[0.0],
        "fgsm": {f"{e:g}": a for e, a in sweep.items()},
        "rg": rg_score(sweep),
        "pgd": {f"{e:g}": a for e, a in pgd.items()},
        "pgd_steps": settings.pgd_eval_steps,
        "n_test": len(dm.test_set),  # type: ignore[arg-type]
    }
    if settings.aa_samples > 0:
        x, y = _test_tensors(dm)
        aa = autoattack_accuracy(
            model,
            x,
            y,
            eps=settings.aa_eps,
            version=settings.aa_version,
            attacks=list(settings.aa_attacks) if settings.aa_attacks else None,
            n_samples=settings.aa_samples,
            seed=seed,
            square_queries=settings.aa_square_queries,
        )
        result["autoattack"] = {
            k: aa[k]
            for k in ("robust_accuracy", "clean_accuracy", "per_attack", "attacks", "skipped", "n_samples", "eps")
        } | {"version": settings.aa_version, "warnings": [str(w) for w in aa.get("warnings", [])]}
        result["autoattack"]["seconds"] = aa.get("seconds")
        subset = [(x[: settings.aa_samples], y[: settings.aa_samples])]
        result["autoattack"]["pgd_same_subset"] = pgd_accuracy(
            model, subset, eps=settings.aa_eps, steps=settings.pgd_eval_steps, seed=seed
        )
    if settings.masking_checks and settings.aa_eps in pgd:
        result["masking_warnings"] = _masking(
            model, loader, settings.aa_eps, sweep, pgd[settings.aa_eps], settings.pgd_eval_steps
        )
    return result


def _masking(
    model: nn.Module, loader: Any, eps: float, sweep: dict[float, float], pgd_acc: float, pgd_steps: int
) -> list[str]:
    """The library's cheap gradient-masking checks (FGSM vs PGD, monotone sweep, large eps; Square off), with
    the PGD step count of the evaluation that measured ``pgd_acc``."""
    try:
        return list(
            gradient_masking_checks(
                model, loader, eps, fgsm_sweep=sweep, pgd_acc=pgd_acc, square_queries=None, pgd_steps=pgd_steps
            )
        )
    except Exception as exc:  # a diagnostic must never lose a finished run
        return [f"masking checks failed: {type(exc).__name__}: {exc}"]


@dataclass
class TrainedRun:
    """One trained (config, seed): the module (its ``model`` is the network), data, MVL refresher, seconds."""

    module: LSARegularizedModule
    dm: LSADataModule
    refresher: MVLRefreshCallback | None
    train_seconds: float


def train_model(
    cfg: RunConfig, settings: TrainSettings, make_dm: Any, seed: int, workdir: Path | None = None
) -> TrainedRun:
    """Trains one (config, seed) as every paper table does (seeded, CPU, no validation)."""
    L.seed_everything(seed, workers=True, verbose=False)
    dm: LSADataModule = make_dm(seed)
    dm.setup()
    model = create_model(settings.model, **dm.model_kwargs())
    module = build_module(cfg, settings, model)
    callbacks: list[Any] = []
    refresher: MVLRefreshCallback | None = None
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    root = Path(tmp.name) if tmp is not None else workdir
    if cfg.lr == "auto":
        refresher = MVLRefreshCallback(
            every_n_epochs=settings.mvl_refresh_every,
            num_samples=settings.mvl_samples,
            perturbation="pgd",
            top_k=1,
            plot=False,
            dirpath=root / "lsa",
        )
        callbacks.append(refresher)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=settings.epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=str(root),
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*val_dataloader.*")
        trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    return TrainedRun(module, dm, refresher, train_s)


def run_one(
    cfg: RunConfig, settings: TrainSettings, make_dm: Any, seed: int, workdir: Path | None = None
) -> dict[str, Any]:
    """Trains and evaluates one (config, seed); returns the JSON-ready record."""
    trained = train_model(cfg, settings, make_dm, seed, workdir)
    module, dm, refresher, train_s = trained.module, trained.dm, trained.refresher, trained.train_seconds
    t1 = time.perf_counter()
    metrics = evaluate(module.model, dm, settings, seed)
    eval_s = time.perf_counter() - t1
    return {
        "dataset": dm.name,
        "run_id": cfg.run_id,
        "name": cfg.name,
        "config": asdict(cfg),
        "seed": seed,
        "git": git_state(),
        "settings": _jsonable(asdict(settings)),
        "mvl": module.mvl,
        "mvl_history": refresher.history if refresher is not None else None,
        "probes": [p.name for p in module.probes or []],
        "metrics": metrics,
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def saved_with(path: Path, settings: TrainSettings) -> bool:
    """Whether ``path`` holds a finished run with exactly these settings.

    A record saved under other settings (e.g. 15 epochs where 40 are asked now) is re-run and replaced,
    so a resumed grid never mixes settings within a table.
    """
    if not path.exists():
        return False
    saved = json.loads(path.read_text()).get("settings")
    if saved == _jsonable(asdict(settings)):
        return True
    print(f"{path.name}: saved with other settings, re-running", flush=True)
    return False


def raw_path(out: Path, dataset: str, cfg: RunConfig, seed: int) -> Path:
    """``<out>/raw/<dataset>__<run_id>__s<seed>.json``."""
    return out / "raw" / f"{dataset}__{cfg.run_id}__s{seed}.json"


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Writes ``record`` atomically (a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, thread setting and library versions, for RESULTS.md."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "lsa_train_commit": _git_commit(),
    }


#: Tracked paths whose uncommitted changes can change a result (the library, configs, these scripts).
GIT_DIRTY_PATHS: tuple[str, ...] = (
    "lsa_train", "conf", "experiments/paper/paper_common.py", "experiments/paper/run_*.py"
)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """Read-only: ``{"commit": full HEAD sha or None, "dirty": bool or None}`` of the lsa_train checkout.

    ``dirty`` is true when a tracked file under :data:`GIT_DIRTY_PATHS` differs from HEAD (untracked
    files, such as new results, do not count); both are ``None`` outside a git checkout.
    """
    root = repo if repo is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *GIT_DIRTY_PATHS],
            capture_output=True,
            text=True,
        )
    except OSError:
        return {"commit": None, "dirty": None}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _git_commit() -> str | None:
    """The short HEAD commit, with ``+dirty`` if :func:`git_state` finds uncommitted changes."""
    state = git_state()
    if state["commit"] is None:
        return None
    return state["commit"][:7] + ("+dirty" if state["dirty"] else "")


def run_grid(
    dataset: str,
    configs: Sequence[RunConfig],
    seeds: Sequence[int],
    settings: TrainSettings,
    make_dm: Any,
    out: Path,
    *,
    command: str,
    tag: str = "all",
    resume: bool = True,
) -> dict[str, Any]:
    """Runs every (config, seed) not saved with these settings yet, then writes ``<out>/meta_<dataset>_<tag>.json``."""
    start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    done, total = 0, len(configs) * len(seeds)
    for cfg in configs:  # config-major: an interrupted grid leaves whole rows, in priority order
        for seed in seeds:
            path = raw_path(out, dataset, cfg, seed)
            done += 1
            if resume and saved_with(path, settings):
                continue
            record = run_one(cfg, settings, make_dm, seed)
            write_json(path, record)
            m = record["metrics"]
            aa = m.get("autoattack", {}).get("robust_accuracy")
            print(
                f"[{done}/{total}] {cfg.run_id} seed={seed} clean={m['clean']:.3f} rg={m['rg']:.1f} "
                f"pgd={m['pgd']} aa={aa} train={record['train_seconds']}s eval={record['eval_seconds']}s",
                flush=True,
            )
    meta = {
        "dataset": dataset,
        "tag": tag,
        "command": command,
        "configs": [c.run_id for c in configs],
        "seeds": list(seeds),
        "settings": _jsonable(asdict(settings)),
        "machine": machine_info(),
        "started": started,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    path = out / f"meta_{dataset}_{tag}.json"
    if path.exists():  # keep the earlier invocations (resumed or extended grids)
        previous = json.loads(path.read_text())
        meta["previous"] = [*previous.pop("previous", []), previous]
    write_json(path, meta)
    return meta


def command_line() -> str:
    """The command that started this process, for the results page."""
    return " ".join([Path(sys.executable).name, *sys.argv])
