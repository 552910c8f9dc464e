"""Attacks that know the defense: PGD with restarts, PGD on the margin loss, a feature-level PGD on the
LSA term's own measure, and transfer from another model.

A layer-wise consistency term can look robust to standard attacks and fall to an attacker who knows it
(adversarial logit pairing was broken that way). These attacks are what such an attacker tries first:

- ``pgd_ce_restarts``: Linf PGD on the cross-entropy with several random restarts.
- ``pgd_margin``: Linf PGD on the Carlini-Wagner margin ``max_{i != y} z_i - z_y``
  (:func:`lsa_train.attacks.losses.margin_loss`), which does not saturate like the cross-entropy.
- ``feature_pgd_kappa_<k>``: :class:`FeaturePGD`, Linf PGD on ``CE + kappa * sum_l mean_batch CM_l``
  with ``CM_l`` the comparison between clean and adversarial representations at the probes the
  defense regularized (its MVL), in the measure it trained with (``regularizer.measure``: the relative
  error, or its pairwise-normalized form) as :class:`lsa_train.training.LayerwiseRegularizer` computes it.
  With ``kappa = 0`` it is exactly :class:`lsa_train.attacks.PGD`.
- ``transfer``: :class:`TransferAttack`, PGD examples crafted on a source model (e.g. the base run of
  the same seed, or an undefended twin) and applied to the evaluated model; it needs no gradient of the
  evaluated model, so masking its gradient does not stop it.

Every attack works in input space ``[0, 1]`` with the model in eval mode; BatchNorm statistics and
parameter gradients are left untouched (:class:`lsa_train.attacks.Attack`), probe hooks are removed on
exit (:class:`lsa_train.analysis.ProbeCapture`), and random starts come from a seeded generator.

Example:
    >>> attacks = adaptive_attacks(0.2, steps=20, restarts=5, kappas=(0, 1, 10), probes=mvl_probes, seed=0,
    ...                            transfer_source=base_model)
    >>> report = evaluate_robustness(model, loader, 0.2, extra_attacks=attacks)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lsa_train.analysis.capture import ProbeCapture
from lsa_train.analysis.measures import canonical_measure_name, get_measure, relative_error
from lsa_train.analysis.probes import Probe
from lsa_train.attacks import PGD
from lsa_train.attacks.base import autocast_off
from lsa_train.attacks.losses import cross_entropy_per_sample, margin_loss
from lsa_train.evaluation.robustness import AttackFn

#: Default kappa grid of the feature-level attack.
DEFAULT_KAPPAS: tuple[float, ...] = (0.0, 1.0, 10.0)


@dataclass(frozen=True)
class NamedAttack:
    """An attack with its report name and settings, run over the data by the evaluation.

    Attributes:
        name: Unique name in reports (``pgd_margin``, ``feature_pgd_kappa_1``, ...).
        attack: ``attack(model, x, y) -> x_adv``.
        settings: JSON-ready parameters, shown in the report.
    """

    name: str
    attack: AttackFn
    settings: Mapping[str, Any] = field(default_factory=dict)


class FeaturePGD(PGD):
    """Linf PGD on ``CE + kappa * sum_l mean_batch measure(phi_l(x), phi_l(x_adv))`` (the relative error, or the
    measure the defense trained with).

    The clean representations ``phi_l(x)`` are recorded once per call (a constant: the attacker moves
    ``x_adv`` only); the adversarial ones on every step, through a :class:`ProbeCapture` that keeps the
    graph and is removed when the call returns. Restarts are ranked by the same objective per sample.
    With ``kappa = 0`` the steps, the random starts and the result are exactly those of
    :class:`~lsa_train.attacks.PGD` with the same arguments.

    Args:
        eps: Linf radius, input units.
        probes: The probes of the term (e.g. the run's MVL), from
            :func:`~lsa_train.analysis.select_probes` on the attacked model.
        kappa: Weight of the representation term, ``>= 0``.
        alpha: Step size; ``None`` means ``max(eps / 4, 2.5 * eps / steps)``.
        steps: Steps per restart.
        restarts: Random restarts.
        seed: Seed of the random starts.
        measure: The comparison of clean and adversarial representations, a name of
            :data:`lsa_train.analysis.measures.MEASURES` (the run's ``regularizer.measure``). A batch of one
            sample has no partner for ``relative_error_pairwise``; it is attacked on ``relative_error``, which
            differs from it by a per-sample constant while the clean input is fixed.

    Shape:
        - images: ``(N, ...)`` in ``[0, 1]``; labels ``(N,)`` int64; output like ``images``.
    """

    _repr_fields = ("eps", "alpha", "steps", "restarts", "kappa", "probe_names", "measure_name")

    def __init__(
        self,
        eps: float,
        probes: Sequence[Probe],
        kappa: float,
        alpha: float | None = None,
        steps: int = 10,
        restarts: int = 1,
        *,
        seed: int | None = None,
        measure: str = "relative_error",
    ) -> None:
        super().__init__(eps, alpha=alpha, steps=steps, restarts=restarts, norm="linf", seed=seed)
        if not probes:
            raise ValueError("FeaturePGD needs at least one probe")
        self.measure_name = canonical_measure_name(measure)
        self._measure = get_measure(self.measure_name)
        if not math.isfinite(float(kappa)) or float(kappa) < 0:
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
        self.probes = list(probes)
        self.kappa = float(kappa)
        self._capture: ProbeCapture | None = None
        self._clean: dict[str, Tensor] = {}

    @property
    def probe_names(self) -> list[str]:
        return [probe.name for probe in self.probes]

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with ProbeCapture(model, self.probes, detach=False) as capture:
            with torch.no_grad():
                self._clean = capture.forward_until_captured(images)
            self._capture = capture
            try:
                return super().perturb(model, images, labels)
            finally:
                self._capture, self._clean = None, {}

    def _feature_term(self) -> Tensor:
        """``(N,)``: the summed relative error of the forward just run, at every probe."""
        assert self._capture is not None, "FeaturePGD's loss is only defined inside perturb"
        adversarial = self._capture.pop()
        measure = self._measure
        if self.measure_name == "relative_error_pairwise" and adversarial[self.probes[0].name].shape[0] < 2:
            measure = relative_error  # one sample has no partner (see the class docstring)
        return torch.stack([measure(self._clean[p.name], adversarial[p.name]) for p in self.probes]).sum(0)

    def _loss_and_grad(self, model: nn.Module, x_adv: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self._logits(model, x_adv)
        loss = self._scalar_loss(logits, labels) + self.kappa * self._feature_term().mean()
        (grad,) = torch.autograd.grad(loss, [x_adv])
        return grad.detach(), logits.detach()

    def _per_sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with autocast_off(logits.device.type):
            ce = cross_entropy_per_sample(logits, labels)
        return (ce + self.kappa * self._feature_term()).detach()


class TransferAttack:
    """Adversarial examples crafted on ``source`` by ``attack``, applied to whatever model is evaluated.

    Callable as ``transfer(model, x, y)``; ``model`` is ignored for crafting, which is the point: no
    gradient of the evaluated model is used. The source should take the same inputs (``[0, 1]``, same
    shape) and predict the same classes.

    Args:
        source: The model the examples are crafted on (its modes and statistics are left untouched).
        attack: The attack run on ``source``, e.g. :class:`~lsa_train.attacks.PGD`.
    """

    def __init__(self, source: nn.Module, attack: AttackFn) -> None:
        self.source = source
        self.attack = attack

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return self.attack(self.source, images, labels)

    def __repr__(self) -> str:
        return f"TransferAttack(source={type(self.source).__name__}, attack={self.attack!r})"


def adaptive_attacks(
    eps: float,
    *,
    steps: int = 20,
    alpha: float | None = None,
    restarts: int = 5,
    base_restarts: int = 1,
    kappas: Sequence[float] = DEFAULT_KAPPAS,
    probes: Sequence[Probe] | None = None,
    transfer_source: nn.Module | None = None,
    transfer_name: str | None = None,
    seed: int = 0,
    measure: str = "relative_error",
) -> list[NamedAttack]:
    """The adaptive attacks, named and with their settings, in the order they are reported.

    Args:
        eps: Linf radius, input units.
        steps: Steps of every attack.
        alpha: Step size of every attack; ``None``: ``max(eps / 4, 2.5 * eps / steps)``.
        restarts: Restarts of the cross-entropy and margin PGD.
        base_restarts: Restarts of the feature-level and transfer PGD (those of the white-box PGD, so
            that ``kappa = 0`` and a transfer from the model itself reproduce it).
        kappas: Weights of the feature-level attack, one attack each; empty for none.
        probes: The probes of the feature-level attack; ``None`` or empty skips it (the caller reports why).
        transfer_source: The source model of the transfer attack; ``None`` skips it.
        transfer_name: What the source is (a checkpoint path), for the report.
        seed: Seed of every random start.
        measure: The representation measure of the feature-level attack (the run's ``regularizer.measure``).

    Returns:
        ``pgd_ce_restarts``, ``pgd_margin``, ``feature_pgd_kappa_<k>`` per kappa (with probes) and
        ``transfer`` (with a source).
    """
    common = {"eps": float(eps), "alpha": alpha, "steps": int(steps), "norm": "linf", "seed": seed}
    attacks = [
        NamedAttack(
            "pgd_ce_restarts",
            PGD(eps, alpha=alpha, steps=steps, restarts=restarts, seed=seed),
            {**common, "loss": "cross_entropy", "restarts": int(restarts)},
        ),
        NamedAttack(
            "pgd_margin",
            PGD(eps, alpha=alpha, steps=steps, restarts=restarts, seed=seed, loss_fn=margin_loss),
            {**common, "loss": "margin (CW)", "restarts": int(restarts)},
        ),
    ]
    for kappa in kappas if probes else ():
        attacks.append(
            NamedAttack(
                f"feature_pgd_kappa_{float(kappa):g}",
                FeaturePGD(eps, probes or [], kappa, alpha=alpha, steps=steps, restarts=base_restarts, seed=seed,
                           measure=measure),
                {**common, "loss": f"cross_entropy + kappa * {canonical_measure_name(measure)} at the probes",
                 "kappa": float(kappa),
                 "probes": [p.name for p in probes or []], "restarts": int(base_restarts)},
            )
        )
    if transfer_source is not None:
        pgd = PGD(eps, alpha=alpha, steps=steps, restarts=base_restarts, seed=seed)
        attacks.append(
            NamedAttack(
                "transfer",
                TransferAttack(transfer_source, pgd),
                {**common, "loss": "cross_entropy on the source model", "restarts": int(base_restarts),
                 "source": transfer_name or type(transfer_source).__name__},
            )
        )
    return attacks
