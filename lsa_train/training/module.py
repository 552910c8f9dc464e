"""``LSARegularizedModule``: adversarial training with the layer-wise LSA term (AT-LR)."""

from __future__ import annotations

import contextlib
import enum
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
from lsa_train.training.allocator import retain_freed_memory
from lsa_train.training.awp import AdversarialWeightPerturbation, WeightBackup
from lsa_train.training.losses import base_loss, check_base_loss
from lsa_train.training.regularizer import LayerwiseRegularizer

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

#: The paper's FGSM grid for the R&G score (MNIST/moons tables).
PAPER_EPS_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

#: The default training attack's budget and step (Linf, inputs in [0, 1]): PGD-AT of Madry et al.
DEFAULT_EPS = 8 / 255
DEFAULT_ALPHA = 2 / 255
#: The default weight of the LSA term (the app's ``regularizer.lambda``).
DEFAULT_GAMMA = 0.1


class _Default(enum.Enum):
    """Marks an argument that was left out, where an explicit ``None`` means something else."""

    TOKEN = "default"


#: Default of ``attack`` and ``regularizer``: PGD-AT with the LSA term (see the class docstring).
DEFAULT = _Default.TOKEN


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or inf; names the step."""


def _attack_with_grad(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Runs an attack from Lightning's validation/test loops, which run under inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        return attack(model, x.clone(), y.clone())


def pgd_like(attack: Attack, steps: int) -> PGD | None:
    """PGD-``steps`` at ``attack``'s budget and in its norm (Linf or L2); ``None`` for a zero budget."""
    if attack.eps <= 0:
        return None
    return PGD(eps=attack.eps, steps=steps, norm=attack.norm or "linf")


class LSARegularizedModule(L.LightningModule):
    """Wraps any classifier for (adversarial) training with the LSA layer-wise term.

    Per minibatch (Algorithm 3 of Khalooei et al.): craft ``x_adv`` with ``attack`` (model
    mode, gradients and BatchNorm statistics untouched, probe capture off), then minimize
    ``base_loss + sum_{l in MVL} gamma_l * CM(phi_l(x), phi_l(x_adv))``. Only the MVL probes
    are hooked, and only around the two forwards of the outer step.

    ``LSARegularizedModule(model)`` alone is PGD-AT (Linf PGD-10, eps 8/255, step 2/255, inputs in
    [0, 1]) plus the LSA term (gamma 0.1) on an MVL that an
    :class:`~lsa_train.training.callbacks.MVLRefreshCallback` picks at fit start and every epoch:
    when the term is on and no ``mvl`` is given, the module brings that callback (and always an
    :class:`~lsa_train.training.reproducibility.RNGStateCallback`) through ``configure_callbacks``,
    unless the Trainer already has one of the type.

    Args:
        model: Any ``nn.Module`` mapping inputs in [0, 1] to logits ``(N, K)``.
        attack: Inner maximization (:mod:`lsa_train.attacks`). Left out: PGD-10 at eps 8/255 (none
            for ``base_loss="normal"``). ``None``: no adversarial examples, only valid with
            ``base_loss="normal"``.
        base_loss: ``"ce"`` (Madry: CE on ``x_adv``), ``"trades"`` (clean CE + beta * KL),
            ``"mart"`` (boosted CE on ``x_adv`` + beta * KL weighted by ``1 - p_clean[y]``; pair it
            with :class:`~lsa_train.attacks.MARTAttack`), or ``"normal"`` (clean CE, no attack).
        regularizer: The LR term. Left out: ``LayerwiseRegularizer(gamma=0.1)`` when the attack
            crafts adversarial examples, else none. ``None`` (or all gammas 0) is plain
            adversarial training.
        optimizer: ``optimizer(params) -> Optimizer`` (a ``functools.partial`` or Hydra
            ``_partial_``); default Adam with lr 1e-3.
        scheduler: ``scheduler(optimizer) -> LRScheduler``, stepped each epoch; optional.
        probes: Candidate probes the MVL is chosen from (see
            :func:`~lsa_train.analysis.probes.select_probes`), found on the first batch.
        mvl: Initial MVL: probe indices (``[2]`` is the paper's ``LR-L2``) or names. The
            :class:`~lsa_train.training.callbacks.MVLRefreshCallback` replaces it when used;
            given, the module adds no refresh callback of its own (a fixed MVL).
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
        val_attack: Attack for validation robust accuracy; default PGD-10 at the training eps,
            in the training attack's norm (Linf or L2).
        test_eps_grid: Linf budgets of the FGSM test sweep (``test/acc_fgsm_<eps>``; FGSM is an
            Linf attack whatever the training norm). Include 0 for the R&G score.
        test_attack: Attack for test robust accuracy; default PGD-20 at the training eps, in the
            training attack's norm.
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
        retain_cpu_memory: At fit start on a CPU, make glibc keep the memory a step frees for the
            next step (:func:`~lsa_train.training.allocator.retain_freed_memory`, process-wide)
            instead of returning it to the kernel and faulting it back in page by page on the next
            (up to ~25 % of a CPU step of PGD-AT or AT-LR on model B, depending on the heap's
            history). Same results; the process's resident memory no longer shrinks between steps.
            No effect on GPUs or off Linux/glibc.

    Raises:
        ValueError: Any argument combination that cannot train (e.g. ``base_loss="ce"`` without an
            attack, the LSA term without adversarial examples), at construction.

    Example:
        >>> module = LSARegularizedModule(model)  # PGD-10 AT at 8/255 + LSA term, MVL refreshed each epoch
        >>> module = LSARegularizedModule(
        ...     model, attack=PGD(eps=0.1, steps=10), regularizer=LayerwiseRegularizer(gamma=0.1), mvl=[2]
        ... )
        >>> lightning.Trainer(max_epochs=5).fit(module, datamodule)
    """

    def __init__(
        self,
        model: nn.Module,
        attack: Attack | _Default | None = DEFAULT,
        base_loss: str = "ce",
        regularizer: LayerwiseRegularizer | _Default | None = DEFAULT,
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
        retain_cpu_memory: bool = True,
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
        if attack is DEFAULT:
            attack = None if base_loss == "normal" else PGD(eps=DEFAULT_EPS, alpha=DEFAULT_ALPHA, steps=10)
        if attack is not None and not isinstance(attack, Attack):
            raise ValueError(f"attack must be an lsa_train.attacks.Attack or None, got {type(attack).__name__}")
        self.attack = attack if attack is not None else NoAttack(eps=0.0)
        crafts = base_loss != "normal" and not isinstance(self.attack, NoAttack)
        if not crafts and base_loss != "normal":
            raise ValueError(
                f"base_loss={base_loss!r} needs an attack (adversarial examples), got attack={attack!r}; pass an "
                "Attack (leave attack out for PGD-10 at eps 8/255), or set base_loss='normal' for clean training"
            )
        if regularizer is DEFAULT:
            regularizer = LayerwiseRegularizer(gamma=DEFAULT_GAMMA) if crafts else None
        if regularizer is not None and not isinstance(regularizer, LayerwiseRegularizer):
            raise ValueError(f"regularizer must be a LayerwiseRegularizer or None, got {type(regularizer).__name__}")
        self.regularizer = regularizer if regularizer is not None and not regularizer.is_zero else None
        if self.regularizer is not None and not crafts:
            raise ValueError(
                "the LSA regularizer compares clean and adversarial representations and needs an attack; "
                f"got base_loss={base_loss!r} with {self.attack!r} (pass regularizer=None for clean training)"
            )
        if self.regularizer is not None and self.regularizer.checkpoint_clean:
            if concat_clean_adv:
                raise ValueError(
                    "checkpoint_clean=True recomputes a separate clean forward, but concat_clean_adv=True runs "
                    "clean and adversarial samples in one forward; set one of them"
                )
            if self.regularizer.stop_clean_grad and base_loss == "ce":
                raise ValueError(
                    "checkpoint_clean=True has nothing to recompute with stop_clean_grad=True and base_loss='ce': "
                    "the clean branch then keeps no graph; set one of them"
                )
        for key, beta in (("trades_beta", trades_beta), ("mart_beta", mart_beta)):
            if not math.isfinite(beta) or beta < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {beta}")
        awp_spec = AdversarialWeightPerturbation.create(awp)
        self.awp = awp_spec if awp_spec is not None and not awp_spec.is_off else None
        if self.awp is not None and not crafts:
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
        self.retain_cpu_memory = bool(retain_cpu_memory)
        self.val_attack = val_attack if val_attack is not None else pgd_like(self.attack, steps=10)
        self.test_attack = test_attack if test_attack is not None else pgd_like(self.attack, steps=20)
        self.test_eps_grid = tuple(float(e) for e in test_eps_grid)
        self.probes: list[Probe] | None = None
        self._mvl_spec: list[int | str] | None = list(mvl) if mvl is not None else None
        self.auto_refresh_mvl = self.regularizer is not None and mvl is None
        self._mvl: list[Probe] = []
        self._warned_empty_mvl = False
        self._checked_first_batch = False
        self._input_range: torch.Tensor | None = None  # running [min, max] of the training inputs, on the device
        #: Set (and warned once) when training inputs leave [0, 1]; the app puts it in the run summary.
        self.input_range_warning: str | None = None
        self._steps_with_term = 0  # training steps whose loss had the LSA term (lambda > 0, non-empty MVL)
        self._training_steps = 0
        self.save_hyperparameters(
            ignore=["model", "attack", "regularizer", "optimizer", "scheduler", "val_attack", "test_attack", "awp"]
        )
        self.hparams["awp"] = self.awp.as_dict() if self.awp is not None else None  # plain data in checkpoints
        # accuracies are 0/1 floats, never NaN: no NaN check, whose `.any()` is a host sync per update on a GPU
        self.train_acc_clean = MeanMetric(nan_strategy="disable")
        self.train_acc_adv = MeanMetric(nan_strategy="disable")
        self.val_acc_clean = MeanMetric(nan_strategy="disable")
        self.val_acc_robust = MeanMetric(nan_strategy="disable")
        self.test_acc_fgsm = nn.ModuleList(MeanMetric(nan_strategy="disable") for _ in self.test_eps_grid)
        self.test_acc_robust = MeanMetric(nan_strategy="disable")

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

    def on_fit_start(self) -> None:
        if self.retain_cpu_memory and self.device.type == "cpu":
            retain_freed_memory()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and isinstance(batch, tuple | list) and batch and batch[0].ndim == 4:
            return type(batch)([batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]])
        return batch

    def _track_input_range(self, x: torch.Tensor) -> None:
        """Keeps the running min/max of the training inputs and warns once when they leave [0, 1].

        The attacks clamp to [0, 1] (normalization belongs inside the model), so normalized inputs would be
        attacked, and clamped, in the wrong space. The min/max stay on the device: they are read on the host
        only for the first batch (which the first-batch checks read anyway) and at each epoch end, so there
        is no host sync per step on a GPU, while a later batch outside the range is still caught.
        """
        if self.input_range_warning is not None or not x.is_floating_point() or x.numel() == 0:
            return
        low, high = torch.aminmax(x.detach())
        current = torch.stack([low, high]).float()
        if self._input_range is None:
            self._input_range = current
            self._check_input_range()
        else:
            self._input_range = torch.stack([torch.minimum(self._input_range[0], current[0]),
                                             torch.maximum(self._input_range[1], current[1])])

    def _check_input_range(self) -> None:
        if self._input_range is None or self.input_range_warning is not None:
            return
        low, high = (float(v) for v in self._input_range.tolist())
        if low < -1e-6 or high > 1 + 1e-6:
            self.input_range_warning = (
                f"training inputs leave [0, 1] (min {low:.4g}, max {high:.4g}): the attacks work in input space "
                "[0, 1] and clamp to it, so normalized data is attacked in the wrong space; feed inputs in [0, 1] "
                "and put the normalization inside the model (model.mean / model.std)"
            )
            rank_zero_warn(self.input_range_warning)

    def on_train_epoch_end(self) -> None:
        self._check_input_range()

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
        self._track_input_range(x)
        mvl = self._active_mvl(x)
        self._training_steps += 1
        self._steps_with_term += bool(mvl)
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
        # sync_dist: the epoch values (and the monitor a user may put on them) are the mean over all ranks
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/base_loss", loss_base, on_step=False, on_epoch=True, sync_dist=True)
        if lr_term is not None:
            self.log("train/lr_term", lr_term, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
            for name, value in per_probe.items():
                self.log(f"train/cm/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
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
        """Clean logits (only when the base loss needs them) and clean MVL representations.

        ``stop_clean_grad`` only cuts the LSA term's clean branch: the regularizer detaches the
        representations, while TRADES' clean CE and KL keep their gradients. ``checkpoint_clean``
        recomputes the clean forward in the backward (up to the deepest MVL probe for ``ce``, the
        whole forward for TRADES and MART, whose clean logits are part of the loss).
        """
        if self.regularizer is None:
            raise RuntimeError("_clean_branch is only called with the LSA term on")
        names = [p.name for p in mvl]
        needs_logits = self.base_loss_name != "ce"  # TRADES and MART need the clean logits: a full forward
        function = self._logits_and_representations if needs_logits else self._representations
        with_grad = needs_logits or not self.regularizer.stop_clean_grad
        if with_grad and self.regularizer.checkpoint_clean:
            outputs = checkpoint(
                function, x, mvl, use_reentrant=False,
                # the recomputation in the backward must not update buffers (BatchNorm statistics) again
                context_fn=lambda: (contextlib.nullcontext(), preserved_model_state(self.model, craft_mode="keep")),
            )
        else:
            with torch.set_grad_enabled(with_grad):
                outputs = function(x, mvl)
        if needs_logits:
            return outputs[0], dict(zip(names, outputs[1:]))
        return None, dict(zip(names, outputs))

    def _logits_and_representations(self, x: torch.Tensor, mvl: list[Probe]) -> tuple[torch.Tensor, ...]:
        # logits (N, K), then the MVL representations in ``mvl`` order
        with ProbeCapture(self.model, mvl, detach=False) as capture:
            logits = self.model(x)
            features = capture.pop()
        return (logits, *(features[p.name] for p in mvl))

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

    def lsa_term_usage(self) -> dict[str, Any]:
        """On how many training steps the LSA term was part of the loss, over the whole run (resumes included).

        Returns:
            ``configured``: whether the term is on at all (``False`` for ``regularizer=None`` or all gammas 0:
            "off by configuration"); ``active_steps``: steps with a non-empty MVL; ``training_steps``: all
            training steps (batches) so far; ``active_fraction``: their ratio (``None`` before any step).
            Loading a checkpoint restores the counts of the training that led to it.
        """
        steps = self._training_steps
        return {
            "configured": self.regularizer is not None,
            "active_steps": self._steps_with_term,
            "training_steps": steps,
            "active_fraction": self._steps_with_term / steps if steps else None,
        }

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
    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks the module needs, unless the Trainer already has one of the same type.

        :class:`~lsa_train.training.reproducibility.RNGStateCallback` (exact resumption), and an
        :class:`~lsa_train.training.callbacks.MVLRefreshCallback` with its defaults when the LSA term
        is on and no ``mvl`` was given. Lightning lets callbacks returned here replace the Trainer's
        of the same type, so only missing ones are returned and a user's own callback is kept.
        """
        from lsa_train.training.callbacks import MVLRefreshCallback
        from lsa_train.training.reproducibility import RNGStateCallback

        present = list(self._trainer.callbacks) if self._trainer is not None else []
        wanted: list[L.Callback] = [RNGStateCallback()]
        if self.auto_refresh_mvl:
            wanted.append(MVLRefreshCallback())
        return [cb for cb in wanted if not any(isinstance(have, type(cb)) for have in present)]

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or functools.partial(torch.optim.Adam, lr=1e-3)
        optimizer = factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, compile_model: bool | Mapping[str, Any] = False, **kwargs: Any
    ) -> LSARegularizedModule:
        """Lightning's ``load_from_checkpoint``, except that ``compile_model`` comes only from the caller:
        the value saved in the file's hyper-parameters is ignored (``torch.compile`` options such as
        ``cpp.cxx`` name programs to run, and a checkpoint is data)."""
        return super().load_from_checkpoint(checkpoint_path, *args, compile_model=compile_model, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lsa_train"] = {
            "mvl": self.mvl,
            "probes": [p.name for p in self.probes or []],
            "awp": self.awp.as_dict() if self.awp is not None else None,
            "lsa_term_steps": [self._steps_with_term, self._training_steps],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lsa_train")
        if state is not None:
            self.probes = None
            self._mvl = []
            self._mvl_spec = list(state["mvl"])
            with_term, steps = state.get("lsa_term_steps", (0, 0))
            self._steps_with_term, self._training_steps = int(with_term), int(steps)
