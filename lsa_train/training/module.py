"""``LSARegularizedModule``: adversarial training with the layer-wise LSA term (AT-LR)."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchmetrics import MeanMetric

from lsa_train.analysis.capture import ProbeCapture
from lsa_train.analysis.probes import Probe, ProbeSpec, select_probes
from lsa_train.attacks import FGSM, PGD, Attack, NoAttack
from lsa_train.attacks.base import preserved_model_state
from lsa_train.training.awp import AdversarialWeightPerturbation, WeightBackup
from lsa_train.training.losses import base_loss, check_base_loss
from lsa_train.training.regularizer import LayerwiseRegularizer

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

#: The paper's FGSM grid for the R&G score (MNIST/moons tables).
PAPER_EPS_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or inf; names the step."""


def _attack_with_grad(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Runs an attack from Lightning's validation/test loops, which run under inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        return attack(model, x.clone(), y.clone())


class LSARegularizedModule(L.LightningModule):
    """Wraps any classifier for (adversarial) training with the LSA layer-wise term.

    Per minibatch (Algorithm 3 of Khalooei et al.): craft ``x_adv`` with ``attack`` (model
    mode, gradients and BatchNorm statistics untouched, probe capture off), then minimize
    ``base_loss + sum_{l in MVL} gamma_l * CM(phi_l(x), phi_l(x_adv))``. Only the MVL probes
    are hooked, and only around the two forwards of the outer step.

    Args:
        model: Any ``nn.Module`` mapping inputs in [0, 1] to logits ``(N, K)``.
        attack: Inner maximization (:mod:`lsa_train.attacks`); ``None`` trains normally.
        base_loss: ``"ce"`` (Madry: CE on ``x_adv``), ``"trades"`` (clean CE + beta * KL),
            ``"mart"`` (boosted CE on ``x_adv`` + beta * KL weighted by ``1 - p_clean[y]``; pair it
            with :class:`~lsa_train.attacks.MARTAttack`), or ``"normal"`` (clean CE, no attack).
        regularizer: The LR term; ``None`` (or all gammas 0) is plain adversarial training.
        optimizer: ``optimizer(params) -> Optimizer`` (a ``functools.partial`` or Hydra
            ``_partial_``); default Adam with lr 1e-3.
        scheduler: ``scheduler(optimizer) -> LRScheduler``, stepped each epoch; optional.
        probes: Candidate probes the MVL is chosen from (see
            :func:`~lsa_train.analysis.probes.select_probes`), found on the first batch.
        mvl: Initial MVL: probe indices (``[2]`` is the paper's ``LR-L2``) or names. The
            :class:`~lsa_train.training.callbacks.MVLRefreshCallback` replaces it when used.
        trades_beta: Weight of the KL term for ``base_loss="trades"``.
        mart_beta: Weight of the KL term for ``base_loss="mart"``.
        awp: Adversarial Weight Perturbation
            (:class:`~lsa_train.training.awp.AdversarialWeightPerturbation`, or a dict
            ``{gamma, warmup}``): after ``x_adv`` is crafted, the training loss and its gradient
            are taken at weights perturbed towards a higher base loss, then the weights are
            restored exactly before the optimizer step. ``None`` or ``gamma`` 0 is off.
        concat_clean_adv: Run clean and adversarial samples in one forward. Only allowed for
            models without BatchNorm, whose batch statistics it would mix. Otherwise the clean
            forward runs separately in train mode, so BatchNorm layers up to the deepest MVL probe
            also update their running statistics with the clean batch (as in TRADES).
        val_attack: Attack for validation robust accuracy; default PGD-10 at the training eps.
        test_eps_grid: FGSM budgets of the test sweep (include 0 for the R&G score).
        test_attack: Attack for test robust accuracy; default PGD-20 at the training eps.
        num_classes: If given, the model's output width is checked against it.
        strict_mvl: Raise instead of warning when the regularizer is on and the MVL is empty.
        check_finite: Stop with :class:`NonFiniteLossError` on a NaN/inf loss (one host sync
            per step).
        channels_last: Convert the model and every 4-D input batch to ``channels_last``
            (faster convolutions on GPUs under AMP, and with oneDNN on CPUs).
        compile_model: ``torch.compile`` the model where no probe hooks are active: every
            attack (training, validation, test) and the plain forwards of steps without an MVL;
            ``True`` or a dict of ``torch.compile`` arguments. The forwards that record MVL
            probes stay eager, since hooks added per step would force recompilation.

    Example:
        >>> module = LSARegularizedModule(
        ...     model, attack=PGD(eps=0.1, steps=10), regularizer=LayerwiseRegularizer(gamma=0.1), mvl=[2]
        ... )
        >>> lightning.Trainer(max_epochs=5).fit(module, datamodule)
    """

    def __init__(
        self,
        model: nn.Module,
        attack: Attack | None = None,
        base_loss: str = "ce",
        regularizer: LayerwiseRegularizer | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        *,
        probes: ProbeSpec = "activations",
        mvl: Sequence[int | str] | None = None,
        trades_beta: float = 6.0,
        mart_beta: float = 6.0,
        awp: AdversarialWeightPerturbation | Mapping[str, Any] | None = None,
        concat_clean_adv: bool = False,
        val_attack: Attack | None = None,
        test_eps_grid: Sequence[float] = PAPER_EPS_GRID,
        test_attack: Attack | None = None,
        num_classes: int | None = None,
        strict_mvl: bool = False,
        check_finite: bool = True,
        channels_last: bool = False,
        compile_model: bool | Mapping[str, Any] = False,
    ) -> None:
        super().__init__()
        if not isinstance(compile_model, bool | Mapping):
            raise ValueError(
                f"compile_model must be true, false or a dict of torch.compile arguments, got {compile_model!r}"
            )
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = bool(channels_last)
        self.compile_kwargs: dict[str, Any] | None = (
            dict(compile_model) if isinstance(compile_model, Mapping) else ({} if compile_model else None)
        )
        self.base_loss_name = check_base_loss(base_loss)
        if attack is not None and not isinstance(attack, Attack):
            raise ValueError(f"attack must be an lsa_train.attacks.Attack or None, got {type(attack).__name__}")
        self.attack = attack if attack is not None else NoAttack(eps=0.0)
        if base_loss in ("trades", "mart") and isinstance(self.attack, NoAttack):
            raise ValueError(f"base_loss={base_loss!r} needs an attack (e.g. attack={base_loss}); got none")
        self.regularizer = regularizer if regularizer is not None and not regularizer.is_zero else None
        if self.regularizer is not None and (base_loss == "normal" or isinstance(self.attack, NoAttack)):
            raise ValueError("the LSA regularizer compares clean and adversarial representations and needs an attack")
        for key, beta in (("trades_beta", trades_beta), ("mart_beta", mart_beta)):
            if not math.isfinite(beta) or beta < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {beta}")
        awp_spec = AdversarialWeightPerturbation.create(awp)
        self.awp = awp_spec if awp_spec is not None and not awp_spec.is_off else None
        if self.awp is not None and (base_loss == "normal" or isinstance(self.attack, NoAttack)):
            raise ValueError("awp perturbs the weights towards a higher adversarial loss and needs an attack")
        self._awp_backup: WeightBackup | None = None
        if any(not math.isfinite(e) or e < 0 for e in test_eps_grid):
            raise ValueError(f"test_eps_grid values must be finite and >= 0, got {list(test_eps_grid)}")
        if concat_clean_adv:
            batchnorms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if batchnorms:
                raise ValueError(
                    f"concat_clean_adv=True would mix clean and adversarial batch statistics in BatchNorm layers "
                    f"{batchnorms[:3]}; set concat_clean_adv=False for this model"
                )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.probe_spec = probes
        self.trades_beta = float(trades_beta)
        self.mart_beta = float(mart_beta)
        self.concat_clean_adv = concat_clean_adv
        self.num_classes = num_classes
        self.strict_mvl = strict_mvl
        self.check_finite = check_finite
        eps = self.attack.eps
        self.val_attack = val_attack if val_attack is not None else (PGD(eps=eps, steps=10) if eps > 0 else None)
        self.test_attack = test_attack if test_attack is not None else (PGD(eps=eps, steps=20) if eps > 0 else None)
        self.test_eps_grid = tuple(float(e) for e in test_eps_grid)
        self.probes: list[Probe] | None = None
        self._mvl_spec: list[int | str] | None = list(mvl) if mvl is not None else None
        self._mvl: list[Probe] = []
        self._warned_empty_mvl = False
        self._checked_first_batch = False
        self.save_hyperparameters(
            ignore=["model", "attack", "regularizer", "optimizer", "scheduler", "val_attack", "test_attack", "awp"]
        )
        self.hparams["awp"] = self.awp.as_dict() if self.awp is not None else None  # plain data in checkpoints
        self.train_acc_clean = MeanMetric()
        self.train_acc_adv = MeanMetric()
        self.val_acc_clean = MeanMetric()
        self.val_acc_robust = MeanMetric()
        self.test_acc_fgsm = nn.ModuleList(MeanMetric() for _ in self.test_eps_grid)
        self.test_acc_robust = MeanMetric()

    # -- probes and the MVL --------------------------------------------------------------------
    def ensure_probes(self, example: torch.Tensor) -> list[Probe]:
        """Finds the candidate probes with one dry forward on ``example[:1]`` (once)."""
        if self.probes is None:
            self.probes = select_probes(self.model, example[:1], self.probe_spec)
            if self._mvl_spec is not None:
                self.set_mvl(self._mvl_spec)
        return self.probes

    @property
    def mvl(self) -> list[str]:
        """Names of the probes currently regularized."""
        if self.probes is None and self._mvl_spec is not None:
            return [str(item) for item in self._mvl_spec]
        return [probe.name for probe in self._mvl]

    def set_mvl(self, mvl: Sequence[int | str]) -> None:
        """Sets the regularized probes by index (into :attr:`probes`) or by name.

        Before the first batch the choice is kept and checked once the probes are known.

        Raises:
            ValueError: An index or name the model lacks, a gamma list of another length,
                or an empty MVL with ``strict_mvl``.
        """
        items = list(mvl)
        if self.probes is None:
            self._mvl_spec = items
            return
        by_name = {probe.name: probe for probe in self.probes}
        chosen: list[Probe] = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item < len(self.probes):
                    raise ValueError(
                        f"MVL index {item} is out of range: the model has {len(self.probes)} probes "
                        f"(0..{len(self.probes) - 1}): {list(by_name)}"
                    )
                chosen.append(self.probes[item])
            elif str(item) in by_name:
                chosen.append(by_name[str(item)])
            else:
                raise ValueError(f"MVL names probe {item!r}, which the model lacks; probes are {list(by_name)}")
        chosen = sorted(set(chosen), key=lambda p: p.index)
        if self.regularizer is not None and chosen:
            self.regularizer.gammas_for([p.name for p in chosen])  # raises on a length mismatch
        if self.regularizer is not None and not chosen and self.strict_mvl:
            raise ValueError("the MVL is empty but the regularizer is on and strict_mvl=True")
        self._mvl = chosen
        self._mvl_spec = [p.name for p in chosen]
        self._warned_empty_mvl = False

    # -- training ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def fast_model(self) -> nn.Module:
        """The model for forwards without probe hooks: compiled if ``compile_model``, else the model."""
        if self.compile_kwargs is None:
            return self.model
        compiled = self.__dict__.get("_compiled_model")  # kept out of the submodules and the state dict
        if compiled is None:
            compiled = torch.compile(self.model, **self.compile_kwargs)
            self.__dict__["_compiled_model"] = compiled
        return compiled

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and isinstance(batch, tuple | list) and batch and batch[0].ndim == 4:
            return type(batch)([batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]])
        return batch

    def _check_first_batch(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        if self._checked_first_batch:
            return
        self._checked_first_batch = True
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the first training batch contains NaN or inf inputs")
        width = logits.shape[-1]
        if self.num_classes is not None and width != self.num_classes:
            raise ValueError(f"model outputs {width} logits but the data has num_classes={self.num_classes}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= width:
            raise ValueError(f"labels must lie in [0, {width - 1}] for a model with {width} outputs; got {low}..{high}")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        mvl = self._active_mvl(x)
        needs_adv = self.base_loss_name != "normal" and not isinstance(self.attack, NoAttack)
        x_adv = self.attack(self.fast_model, x, y) if needs_adv else None
        if x_adv is not None and self.awp is not None and self.awp.active(self.current_epoch):
            self._perturb_weights(x, x_adv, y)
        try:
            return self._outer_step(x, y, x_adv, mvl, batch_idx)
        except BaseException:
            self.restore_weights()
            raise

    def _outer_step(
        self, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None, mvl: list[Probe], batch_idx: int
    ) -> torch.Tensor:
        needs_clean = self.base_loss_name != "ce" or bool(mvl) or x_adv is None
        lr_term: torch.Tensor | None = None
        per_probe: dict[str, torch.Tensor] = {}
        if mvl:
            assert self.regularizer is not None and x_adv is not None
            names = [p.name for p in mvl]
            if self.concat_clean_adv:
                with ProbeCapture(self.model, mvl, detach=False) as capture:
                    logits_clean, logits_adv = self.model(torch.cat([x, x_adv])).chunk(2)
                    features = capture.pop()
                clean = {k: v[: len(x)] for k, v in features.items()}
                adversarial = {k: v[len(x) :] for k, v in features.items()}
            else:
                logits_clean, clean = self._clean_branch(x, mvl)
                with ProbeCapture(self.model, mvl, detach=False) as capture:
                    logits_adv = self.model(x_adv)
                    adversarial = capture.pop()
            lr_term, per_probe = self.regularizer(clean, adversarial, names)
        else:
            logits_clean = self.fast_model(x) if needs_clean else None
            logits_adv = self.fast_model(x_adv) if x_adv is not None else None
        self._check_first_batch(x, y, logits_adv if logits_adv is not None else logits_clean)
        loss_base = base_loss(
            self.base_loss_name, y, logits_adv, logits_clean, self.trades_beta, mart_beta=self.mart_beta
        )
        loss = loss_base if lr_term is None else loss_base + lr_term
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss.detach())}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); stopping, checkpoints already written are kept"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/base_loss", loss_base, on_step=False, on_epoch=True)
        if lr_term is not None:
            self.log("train/lr_term", lr_term, prog_bar=True, on_step=False, on_epoch=True)
            for name, value in per_probe.items():
                self.log(f"train/cm/{name}", value, on_step=False, on_epoch=True)
        if logits_clean is not None:
            self.train_acc_clean.update((logits_clean.detach().argmax(1) == y).float())
            self.log("train/acc_clean", self.train_acc_clean, on_step=False, on_epoch=True)
        if logits_adv is not None:
            self.train_acc_adv.update((logits_adv.detach().argmax(1) == y).float())
            self.log("train/acc_adv", self.train_acc_adv, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    # -- adversarial weight perturbation -------------------------------------------------------
    def _perturb_weights(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> None:
        """Moves the weights to the AWP point; :meth:`restore_weights` undoes it after the backward."""
        assert self.awp is not None
        self.restore_weights()  # never stack perturbations (a previous step that ended abnormally)
        needs_clean = self.base_loss_name != "ce"

        def adversarial_loss(net: nn.Module) -> torch.Tensor:
            logits_clean = net(x) if needs_clean else None
            return base_loss(
                self.base_loss_name, y, net(x_adv), logits_clean, self.trades_beta, mart_beta=self.mart_beta
            )

        diffs = self.awp.perturbation(self.model, adversarial_loss)
        self._awp_backup = self.awp.perturb(self.model, diffs)

    def restore_weights(self) -> None:
        """Restores the weights saved before an AWP perturbation (bit-exact); a no-op otherwise."""
        if self._awp_backup is not None:
            AdversarialWeightPerturbation.restore(self._awp_backup)
            self._awp_backup = None

    def on_after_backward(self) -> None:
        # the gradient was taken at the perturbed weights: restore them before the optimizer steps
        self.restore_weights()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.restore_weights()  # in case no backward ran after the perturbation

    def _clean_branch(self, x: torch.Tensor, mvl: list[Probe]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Clean logits (only when the base loss needs them) and clean MVL representations."""
        assert self.regularizer is not None
        with_grad = not self.regularizer.stop_clean_grad
        if self.base_loss_name != "ce":  # TRADES and MART need the clean logits: a full forward
            with torch.set_grad_enabled(with_grad), ProbeCapture(self.model, mvl, detach=False) as capture:
                logits = self.model(x)
                return logits, capture.pop()
        names = [p.name for p in mvl]
        if with_grad and self.regularizer.checkpoint_clean:
            outputs = checkpoint(
                self._representations, x, mvl, use_reentrant=False,
                # the recomputation in the backward must not update buffers (BatchNorm statistics) again
                context_fn=lambda: (contextlib.nullcontext(), preserved_model_state(self.model, craft_mode="keep")),
            )
        else:
            with torch.set_grad_enabled(with_grad):
                outputs = self._representations(x, mvl)
        return None, dict(zip(names, outputs))

    def _representations(self, x: torch.Tensor, mvl: list[Probe]) -> tuple[torch.Tensor, ...]:
        # only the representations are needed: the forward stops after the deepest MVL probe
        with ProbeCapture(self.model, mvl, detach=False) as capture:
            return tuple(capture.forward_until_captured(x).values())

    def _active_mvl(self, x: torch.Tensor) -> list[Probe]:
        if self.regularizer is None:
            return []
        self.ensure_probes(x)
        if not self._mvl and not self._warned_empty_mvl:
            if self.strict_mvl:
                raise ValueError("the MVL is empty but the regularizer is on and strict_mvl=True")
            rank_zero_warn("the MVL is empty: training as the base adversarial training until it is refreshed")
            self._warned_empty_mvl = True
        return self._mvl

    # -- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if self.regularizer is not None:
            self.ensure_probes(x)
        logits = self.fast_model(x)
        self.log("val/loss", nn.functional.cross_entropy(logits.float(), y), on_epoch=True, sync_dist=True)
        self.val_acc_clean.update((logits.argmax(1) == y).float())
        self.log("val/acc_clean", self.val_acc_clean, prog_bar=True, on_epoch=True)
        if self.val_attack is not None:
            x_adv = _attack_with_grad(self.val_attack, self.fast_model, x, y)
            self.val_acc_robust.update((self.fast_model(x_adv).argmax(1) == y).float())
            self.log("val/acc_pgd", self.val_acc_robust, prog_bar=True, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        for eps, metric in zip(self.test_eps_grid, self.test_acc_fgsm):
            x_eps = x if eps == 0 else _attack_with_grad(FGSM(eps=eps), self.fast_model, x, y)
            metric.update((self.fast_model(x_eps).argmax(1) == y).float())
        if self.test_attack is not None:
            x_adv = _attack_with_grad(self.test_attack, self.fast_model, x, y)
            self.test_acc_robust.update((self.fast_model(x_adv).argmax(1) == y).float())

    def on_test_epoch_end(self) -> None:
        accuracies = [metric.compute() for metric in self.test_acc_fgsm]
        for eps, acc in zip(self.test_eps_grid, accuracies):
            self.log(f"test/acc_fgsm_{eps:g}", acc)
        if 0.0 in self.test_eps_grid:
            self.log("test/rg_score", 100.0 * torch.stack(accuracies).sum())
            self.log("test/acc_clean", accuracies[self.test_eps_grid.index(0.0)])
        if self.test_attack is not None:
            self.log("test/acc_pgd", self.test_acc_robust.compute())
            self.test_acc_robust.reset()
        for metric in self.test_acc_fgsm:
            metric.reset()

    # -- optimization and checkpoints ----------------------------------------------------------
    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or functools.partial(torch.optim.Adam, lr=1e-3)
        optimizer = factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lsa_train"] = {
            "mvl": self.mvl,
            "probes": [p.name for p in self.probes or []],
            "awp": self.awp.as_dict() if self.awp is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lsa_train")
        if state is not None:
            self.probes = None
            self._mvl = []
            self._mvl_spec = list(state["mvl"])
