"""``MVLRefreshCallback``: re-runs the layer sustainability analysis during training."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lsa_train.analysis.analyze import compute_cm
from lsa_train.analysis.figures import read_rgb
from lsa_train.analysis.history import MVLHistoryTable, plot_mvl_history
from lsa_train.analysis.measures import canonical_measure_name
from lsa_train.analysis.mvl import check_mvl_rule, select_mvl
from lsa_train.analysis.plots import plot_layer_curves
from lsa_train.analysis.results import LSAResult
from lsa_train.attacks import ATTACKS, create_attack
from lsa_train.training.module import LSARegularizedModule

#: The MVL-over-the-run heatmap and its data, rewritten at every refresh in ``dirpath``.
HISTORY_PNG = "mvl_history.png"
HISTORY_CSV = "mvl_history.csv"


class MVLRefreshCallback(Callback):
    """Re-picks the Most Vulnerable Layers every ``every_n_epochs`` epochs.

    On a fixed held-out subset it perturbs the inputs (PGD by default, at the training
    attack's eps and in its norm), computes the CM matrix over the module's candidate probes, picks the MVL
    by ``eta`` (Algorithm 1), ``top_k`` or a ``fixed`` list, and hands it to the module.
    It runs once at the start of fitting (when the module has no MVL yet) and at the start
    of every ``every_n_epochs``-th training epoch, on the weights the previous epoch left.
    Under DDP rank 0's analysis is broadcast, so every rank regularizes the same probes.

    Args:
        every_n_epochs: Refresh period in epochs (>= 1).
        num_samples: Size of the held-out analysis subset.
        perturbation: Attack name from :mod:`lsa_train.attacks` used to perturb.
        eps: Perturbation budget; default: the module's training attack eps, and then the
            perturbation runs in the training attack's norm too (``pgd`` and ``apgd`` take it;
            Linf-only attacks such as ``fgsm`` are refused for an L2 training attack). Given, the
            perturbation keeps its own norm (``pgd``: Linf, ``pgd_l2``: L2). The norm is logged.
        eta: Algorithm 1 cut-off (ignored if ``top_k`` or ``fixed`` is given).
        top_k: Keep the ``k`` most vulnerable probes.
        min_layers: With the ``eta`` rule, keep at least this many probes (the most vulnerable ones
            when fewer pass the cut-off; the refresh says so in the log). The default 1 keeps the LSA
            term on: the eta rule alone can select nothing, and the term then silently stops. 0 allows
            an empty MVL (the module then trains without the term until the next refresh).
        fixed: A fixed MVL (indices or names); the analysis still runs and is logged.
        measure: Comparison measure for the analysis.
        plot: Write the per-layer figure of every refresh (``lsa_<tag>.png``) and the MVL-over-the-run
            heatmap (``mvl_history.png``, rewritten at each refresh) into ``dirpath``, on a worker
            thread; a TensorBoard logger also receives both images (``lsa/layers``, ``lsa/mvl_history``).
        dirpath: Where figures and CSVs go (``mvl_history.csv`` holds the heatmap's data and is
            written even without ``plot``); default ``<trainer.log_dir or default_root_dir>/lsa``.
        attack_kwargs: Extra arguments for the perturbation attack, on top of ``{"steps": 5}``
            for PGD, APGD and TRADES and ``alpha=eps / 4`` for PGD and TRADES (the analysis needs
            a representative perturbation, not the strongest one:
            64 samples with PGD-5 picked the same MVL as all 360 validation samples with PGD-20 on
            every model B and ResNet-18 of ``experiments/bench/refresh_fidelity.py``, at a quarter of
            the old 256-sample cost; PGD-3 did not, its steps of eps/4 stop short of the budget).
        seed: Seeds the perturbation's random start (``seed + refresh count``), so refreshes never
            draw from the global generators and training randomness is the same with or without them.

    Raises:
        ValueError: Invalid period, sample count or MVL rule, at construction.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 64,
        perturbation: str = "pgd",
        eps: float | None = None,
        eta: float | None = 1.0,
        top_k: int | None = None,
        fixed: Sequence[int | str] | None = None,
        measure: str = "relative_error",
        min_layers: int = 1,
        plot: bool = True,
        dirpath: str | Path | None = None,
        attack_kwargs: dict[str, Any] | None = None,
        seed: int = 313,
    ) -> None:
        if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs}")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples}")
        check_mvl_rule(None if top_k is not None else eta, top_k, min_layers)
        self.min_layers = int(min_layers)
        self.every_n_epochs = int(every_n_epochs)
        self.num_samples = int(num_samples)
        self.perturbation = perturbation
        self.eps = eps
        self.eta = eta
        self.top_k = top_k
        self.fixed = list(fixed) if fixed is not None else None
        self.measure = canonical_measure_name(measure)
        self.plot = plot
        self.dirpath = Path(dirpath) if dirpath is not None else None
        default_kwargs = {"steps": 5} if perturbation in ("pgd", "pgd_l2", "apgd", "trades") else {}
        self.attack_kwargs = {**default_kwargs, **(attack_kwargs or {})}  # given keys override the defaults
        create_attack(perturbation, eps=eps if eps is not None else 0.0, **self.attack_kwargs)  # validate early
        self.seed = int(seed)
        self.current_mvl: list[str] = []
        self.history: list[dict[str, Any]] = []
        self._subset: tuple[torch.Tensor, torch.Tensor] | None = None
        self._plotter: ThreadPoolExecutor | None = None  # made on first use; not pickled
        self._plot_job: Future | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = self._check_module(pl_module)
        if self.current_mvl:  # restored from a checkpoint
            module.set_mvl(self.current_mvl)
        elif not module.mvl or self.fixed is not None:
            self.refresh(trainer, module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # At the start of epoch e (not the end of e-1): epoch-end checkpoints then hold the
        # state before the refresh, so a resumed run refreshes exactly as an uninterrupted one.
        epoch = trainer.current_epoch
        if epoch > 0 and epoch % self.every_n_epochs == 0:
            self.refresh(trainer, self._check_module(pl_module))

    def state_dict(self) -> dict[str, Any]:
        return {"current_mvl": list(self.current_mvl), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current_mvl = list(state_dict.get("current_mvl", []))
        self.history = list(state_dict.get("history", []))

    # -- the refresh ---------------------------------------------------------------------------
    def refresh(self, trainer: L.Trainer, module: LSARegularizedModule) -> LSAResult:
        """Runs the analysis now, sets the module's MVL and logs it; returns the result."""
        x, y = self._analysis_subset(trainer, module)
        probes = module.ensure_probes(x)
        eps, kwargs = self._budget(module)
        seed = self.seed + len(self.history)
        if self.perturbation in ("pgd", "pgd_l2", "trades") and eps > 0:
            kwargs.setdefault("alpha", eps / 4)  # the step the refresh benchmark chose PGD-5 with
        attack = create_attack(self.perturbation, eps=eps, seed=seed, **kwargs)
        norm = attack.norm or "linf"
        with torch.enable_grad():
            x_adv = attack(module.model, x, y)
        cm = compute_cm(module.model, probes, x, x_adv, measure=self.measure)
        cm = trainer.strategy.broadcast(cm, src=0)  # under DDP every rank uses rank 0's analysis
        if self.fixed is not None:
            module.set_mvl(self.fixed)  # validates indices and names against the model's probes
            by_name = {p.name: p.index for p in probes}
            mvl = [by_name[name] for name in module.mvl]
        else:
            mvl = select_mvl(cm, eta=self.eta, top_k=self.top_k, min_layers=self.min_layers)
            by_rule = select_mvl(cm, eta=self.eta) if self.top_k is None else mvl
            if len(by_rule) < len(mvl):
                rank_zero_info(
                    f"[LSA] epoch {trainer.current_epoch}: eta={self.eta} selects {len(by_rule)} of {cm.shape[1]} "
                    f"probes; keeping the {len(mvl)} most vulnerable (min_layers={self.min_layers}; "
                    "min_layers=0 allows an empty MVL)"
                )
        result = LSAResult(
            probe_names=[p.name for p in probes],
            cm=cm,
            mvl=mvl,
            measure=self.measure,
            perturbation=self.perturbation,
            eta=self.eta if self.top_k is None else None,
            top_k=self.top_k,
            metadata={"epoch": trainer.current_epoch, "eps": eps, "norm": norm},
        )
        module.set_mvl(result.mvl_names)
        self.current_mvl = module.mvl
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "mvl": list(self.current_mvl),
                "probe_means": result.probe_means.tolist(),
            }
        )
        self._report(trainer, module, result)
        return result

    def _report(self, trainer: L.Trainer, module: LSARegularizedModule, result: LSAResult) -> None:
        metrics = {"lsa/mvl_size": float(len(result.mvl)), "lsa/mu": result.mu, "lsa/sigma": result.sigma}
        metrics.update({f"lsa/cm/{n}": float(v) for n, v in zip(result.probe_names, result.probe_means.tolist())})
        if trainer.loggers:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        budget = f"{self.perturbation} {result.metadata['norm']} eps={result.metadata['eps']:g}"
        rank_zero_info(f"[LSA] epoch {trainer.current_epoch}: MVL = {result.mvl_names} ({budget})")
        out = self._dirpath(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        if not trainer.is_global_zero:
            return
        tag = f"{len(self.history):03d}_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}"
        result.to_csv(out / f"lsa_{tag}.csv")
        table = self._history_table(result.probe_names)  # a snapshot of the run so far
        if not self.plot:
            table.to_csv(out / HISTORY_CSV)
            return
        # drawn on a worker thread, so the PNGs never hold up training
        self._wait_for_plots()
        if self._plotter is None:
            self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsa-plot")
        self._plot_job = self._plotter.submit(
            self._draw, result, table, out, tag, _image_writers(trainer), trainer.global_step
        )

    def _history_table(self, probe_names: list[str]) -> MVLHistoryTable:
        """The history's heatmap data, from the last refreshes that used these probes (a run resumed with
        another probe set starts a new heatmap instead of failing)."""
        known = set(probe_names)
        start = len(self.history)
        while start > 0:
            entry = self.history[start - 1]
            if len(entry["probe_means"]) != len(probe_names) or not set(entry["mvl"]) <= known:
                break
            start -= 1
        return MVLHistoryTable.from_history(self.history[start:], probe_names)

    def _draw(
        self, result: LSAResult, table: MVLHistoryTable, out: Path, tag: str, writers: list[Any], step: int
    ) -> None:
        """Worker thread: the refresh's curve, the run's heatmap (+ CSV), and both to TensorBoard."""
        epoch = result.metadata["epoch"]
        curves = plot_layer_curves(
            {self.perturbation: result},
            out / f"lsa_{tag}.png",
            title=f"LSA before epoch {epoch} ({self.perturbation} {result.metadata['norm']} "
            f"eps={result.metadata['eps']:g})",
        )
        heatmap = plot_mvl_history(
            table, out / HISTORY_PNG, csv_path=out / HISTORY_CSV, measure=self.measure,
            title=f"Mean CM per probe at each MVL refresh (up to epoch {epoch}; {self.perturbation})",
        )
        for writer in writers:
            writer.add_image("lsa/layers", read_rgb(curves), global_step=step, dataformats="HWC")
            writer.add_image("lsa/mvl_history", read_rgb(heatmap), global_step=step, dataformats="HWC")
            writer.flush()

    def _budget(self, module: LSARegularizedModule) -> tuple[float, dict[str, Any]]:
        """The analysis budget and attack arguments: ``eps`` as given, else the training attack's
        eps in the training attack's norm.

        Raises:
            ValueError: The training budget is in a norm the perturbation cannot use.
        """
        if self.eps is not None:
            return float(self.eps), dict(self.attack_kwargs)
        training = module.attack
        norm = training.norm or "linf"
        takes_norm = "norm" in inspect.signature(ATTACKS[self.perturbation.lower()].__init__).parameters
        if takes_norm:
            given = self.attack_kwargs.get("norm")
            if given is not None and given != norm:
                raise ValueError(
                    f"MVLRefreshCallback: attack_kwargs norm={given!r} but eps comes from the training attack "
                    f"{training!r}, a {norm} budget; set eps= for a {given} budget, or drop norm"
                )
            return float(training.eps), {**self.attack_kwargs, "norm": norm}
        own = create_attack(self.perturbation, eps=0.0, **self.attack_kwargs).norm or "linf"
        if own != norm:
            raise ValueError(
                f"MVLRefreshCallback: perturbation={self.perturbation!r} is a {own} attack, but eps comes from the "
                f"training attack {training!r}, a {norm} budget; set eps= to a {own} budget or choose "
                "perturbation='pgd' (it runs in the training norm)"
            )
        return float(training.eps), dict(self.attack_kwargs)

    def _wait_for_plots(self) -> None:
        """Blocks until the last figure is written; re-raises a plotting error here."""
        if self._plot_job is not None:
            job, self._plot_job = self._plot_job, None
            job.result()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wait_for_plots()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._plot_job is not None:  # let the figure finish; the training error is the one to report
            self._plot_job.exception()
            self._plot_job = None

    def __getstate__(self) -> dict[str, Any]:
        self._wait_for_plots()
        return {**self.__dict__, "_plotter": None, "_plot_job": None}

    def history_files(self, trainer: L.Trainer) -> dict[str, Path]:
        """The MVL-over-the-run files written so far: ``{"figure": mvl_history.png, "csv": mvl_history.csv}``
        (only those that exist)."""
        self._wait_for_plots()
        out = self._dirpath(trainer)
        files = {"figure": out / HISTORY_PNG, "csv": out / HISTORY_CSV}
        return {key: path for key, path in files.items() if path.is_file()}

    def _dirpath(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return self.dirpath
        return Path(trainer.log_dir or trainer.default_root_dir) / "lsa"

    def _analysis_subset(self, trainer: L.Trainer, module: LSARegularizedModule) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed held-out subset: the datamodule's ``analysis_subset`` or the first validation samples."""
        if self._subset is None:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "analysis_subset"):
                available = len(getattr(datamodule, "val_set", None) or []) or self.num_samples
                x, y = datamodule.analysis_subset(min(self.num_samples, available))
            else:
                x, y = _first_samples(trainer, self.num_samples)
            self._subset = (x, y)
        x, y = self._subset
        return x.to(module.device), y.to(module.device)

    @staticmethod
    def _check_module(pl_module: L.LightningModule) -> LSARegularizedModule:
        if not isinstance(pl_module, LSARegularizedModule):
            raise TypeError(f"MVLRefreshCallback needs an LSARegularizedModule, got {type(pl_module).__name__}")
        return pl_module


def _image_writers(trainer: L.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger, fetched on the training thread (Lightning
    creates it lazily on first access)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _first_samples(trainer: L.Trainer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the validation set (else the training set), read straight from the
    dataset: the same samples on every call, rank and resume, and no sampler draws random numbers."""
    if trainer.val_dataloaders is None:
        with contextlib.suppress(MisconfigurationException):  # no val_dataloaders given, none defined
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
    loaders = trainer.val_dataloaders
    if not loaders:
        rank_zero_warn(
            f"MVLRefreshCallback: there is no validation data, so the MVL is chosen on the first {n} training "
            "samples; pass val_dataloaders to trainer.fit (or a datamodule with a validation split) to analyse "
            "held-out data"
        )
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        loaders = trainer.train_dataloader
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    dataset = loader.dataset
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([torch.as_tensor(x) for x, _ in samples]), torch.as_tensor([int(y) for _, y in samples])
