"""Attacks that know the defense: PGD with restarts, PGD on the margin loss, a feature-level PGD on the
LSA term's own measure, and transfer from another model.

A layer-wise consistency term can look robust to standard attacks and fall to an attacker who knows it
(adversarial logit pairing was broken that way). These attacks are what such an attacker tries first:

- ``pgd_ce_restarts``: Linf PGD on the cross-entropy with several random restarts.
- ``pgd_margin``: Linf PGD on the Carlini-Wagner margin ``max_{i != y} z_i - z_y``
  (:func:`lsa_train.attacks.losses.margin_loss`), which does not saturate like the cross-entropy.
- ``feature_pgd_kappa_<k>``: :class:`FeaturePGD`, Linf PGD on ``CE + kappa * sum_l w_l * mean_batch CM_l``
  with ``CM_l`` the comparison between clean and adversarial representations at the probes the
  defense regularized (its MVL), in the measure it trained with (``regularizer.measure``: the relative
  error, or its pairwise-normalized form) and with its per-probe weights ``w_l`` (the run's
  ``regularizer.lambda``), as :class:`lsa_train.training.LayerwiseRegularizer` computes the training term:
  at ``kappa = 1`` the attacker maximizes the objective the defense minimized. ``kappa > 0`` only: at
  ``kappa = 0`` :class:`FeaturePGD` is exactly :class:`lsa_train.attacks.PGD`, already in the evaluation.
- ``transfer``: :class:`TransferAttack`, PGD examples crafted on a source model (e.g. the base run of
  the same seed, or an undefended twin) and applied to the evaluated model; it needs no gradient of the
  evaluated model, so masking its gradient does not stop it.

Every attack works in input space ``[0, 1]`` with the model in eval mode; BatchNorm statistics and
parameter gradients are left untouched (:class:`lsa_train.attacks.Attack`), probe hooks are removed on
exit (:class:`lsa_train.analysis.ProbeCapture`), and random starts come from a seeded generator, each
attack with its own seed (:func:`lsa_train.evaluation.seeding.attack_seed` of the evaluation seed and its
name), so no attack retraces another's random starts.

Example:
    >>> attacks = adaptive_attacks(0.2, steps=20, restarts=5, kappas=(1, 10), probes=mvl_probes, weights=0.1,
    ...                            seed=0, transfer_source=base_model)
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
from lsa_train.evaluation.seeding import attack_seed

#: Default kappa grid of the feature-level attack (kappa 0 is plain PGD: not an adaptive attack).
DEFAULT_KAPPAS: tuple[float, ...] = (1.0, 10.0)


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
    """Linf PGD on ``CE + kappa * sum_l w_l * mean_batch measure(phi_l(x), phi_l(x_adv))`` (the relative error,
    or the measure the defense trained with; ``w_l`` its per-probe weights, the run's ``regularizer.lambda``).

    The clean representations ``phi_l(x)`` are recorded once per call (a constant: the attacker moves
    ``x_adv`` only); the adversarial ones on every step, through a :class:`ProbeCapture` that keeps the
    graph and is removed when the call returns. Restarts are ranked by the same objective per sample.
    With ``kappa = 0`` the steps, the random starts and the result are exactly those of
    :class:`~lsa_train.attacks.PGD` with the same arguments. A probe of weight 0 is not captured and adds
    nothing to the objective.

    Args:
        eps: Linf radius, input units.
        probes: The probes of the term (e.g. the run's MVL), from
            :func:`~lsa_train.analysis.select_probes` on the attacked model.
        kappa: Weight of the representation term, ``>= 0``.
        weights: Per-probe weights ``w_l`` (finite, ``>= 0``, not all 0): one number for every probe, one per
            probe in the order of ``probes``, or ``None`` for 1 each. With the run's ``regularizer.lambda``
            (:class:`~lsa_train.training.LayerwiseRegularizer`'s ``gamma``), ``kappa = 1`` is the training term.
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

    _repr_fields = ("eps", "alpha", "steps", "restarts", "kappa", "probe_weights", "measure_name")

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
        weights: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(eps, alpha=alpha, steps=steps, restarts=restarts, norm="linf", seed=seed)
        if not probes:
            raise ValueError("FeaturePGD needs at least one probe")
        self.measure_name = canonical_measure_name(measure)
        self._measure = get_measure(self.measure_name)
        if not math.isfinite(float(kappa)) or float(kappa) < 0:
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
        self.probes = list(probes)
        self.weights = probe_weights(weights, len(self.probes))
        self.kappa = float(kappa)
        # the probes that enter the objective: a weight-0 probe is neither captured nor computed
        self._active = [(p, w) for p, w in zip(self.probes, self.weights, strict=True) if w > 0]
        self._capture: ProbeCapture | None = None
        self._clean: dict[str, Tensor] = {}

    @property
    def probe_names(self) -> list[str]:
        return [probe.name for probe in self.probes]

    @property
    def probe_weights(self) -> dict[str, float]:
        """Probe name -> its weight ``w_l`` in the objective."""
        return {probe.name: weight for probe, weight in zip(self.probes, self.weights, strict=True)}

    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with ProbeCapture(model, [p for p, _ in self._active], detach=False) as capture:
            with torch.no_grad():
                self._clean = capture.forward_until_captured(images)
            self._capture = capture
            try:
                return super().perturb(model, images, labels)
            finally:
                self._capture, self._clean = None, {}

    def _feature_term(self) -> Tensor:
        """``(N,)``: ``sum_l w_l * measure_l`` of the forward just run, over the probes of weight > 0."""
        assert self._capture is not None, "FeaturePGD's loss is only defined inside perturb"
        adversarial = self._capture.pop()
        measure = self._measure
        if self.measure_name == "relative_error_pairwise" and adversarial[self._active[0][0].name].shape[0] < 2:
            measure = relative_error  # one sample has no partner (see the class docstring)
        return torch.stack(
            [weight * measure(self._clean[p.name], adversarial[p.name]) for p, weight in self._active]
        ).sum(0)

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


def probe_weights(weights: float | Sequence[float] | None, n_probes: int) -> list[float]:
    """``weights`` as one finite weight ``>= 0`` per probe (``None``: 1 each; one number: that for each).

    Raises:
        ValueError: A negative or non-finite weight, a list of another length than the probes, or every
            weight 0 (the feature term would be off: the attack would be plain PGD).
    """
    if weights is None:
        values = [1.0] * n_probes
    elif isinstance(weights, int | float) and not isinstance(weights, bool):
        values = [float(weights)] * n_probes
    else:
        values = [float(w) for w in weights]
        if len(values) != n_probes:
            raise ValueError(f"FeaturePGD has {n_probes} probes but {len(values)} weights {values}; give one "
                             "number, or one per probe")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError(f"probe weights must be finite numbers >= 0, got {values}")
    if not any(w > 0 for w in values):
        raise ValueError(f"every probe weight is 0 ({values}): the feature term is off and the attack is plain PGD")
    return values


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
    weights: float | Sequence[float] | None = None,
    transfer_source: nn.Module | None = None,
    transfer_name: str | None = None,
    seed: int = 0,
    measure: str = "relative_error",
) -> list[NamedAttack]:
    """The adaptive attacks, named and with their settings, in the order they are reported.

    Every attack gets its own seed, :func:`~lsa_train.evaluation.seeding.attack_seed` of ``seed`` and its
    name (shown in its settings), so none repeats the random starts of another or of the evaluation's PGD.

    Args:
        eps: Linf radius, input units.
        steps: Steps of every attack.
        alpha: Step size of every attack; ``None``: ``max(eps / 4, 2.5 * eps / steps)``.
        restarts: Restarts of the cross-entropy and margin PGD.
        base_restarts: Restarts of the feature-level and transfer PGD (those of the white-box PGD).
        kappas: Weights of the feature-level attack, one attack each, every one ``> 0``; empty for none.
        probes: The probes of the feature-level attack; ``None`` or empty skips it (the caller reports why).
        weights: Per-probe weights of the feature term (:class:`FeaturePGD`): the run's ``regularizer.lambda``
            (one number, or one per probe in the order of ``probes``); ``None``: 1 each.
        transfer_source: The source model of the transfer attack; ``None`` skips it.
        transfer_name: What the source is (a checkpoint path), for the report.
        seed: The evaluation seed, from which every attack's seed is derived.
        measure: The representation measure of the feature-level attack (the run's ``regularizer.measure``).

    Returns:
        ``pgd_ce_restarts``, ``pgd_margin``, ``feature_pgd_kappa_<k>`` per kappa (with probes) and
        ``transfer`` (with a source).

    Raises:
        ValueError: A kappa that is not a finite number ``> 0`` (``kappa = 0`` is plain PGD, which the
            evaluation already runs), or probe weights :func:`probe_weights` refuses.
    """
    bad = [k for k in kappas if not math.isfinite(float(k)) or float(k) <= 0]
    if bad:
        raise ValueError(f"kappas {list(kappas)} must be finite numbers > 0: kappa 0 is plain PGD (the evaluation's "
                         f"pgd), not an attack on the representations; drop {bad}")
    common = {"eps": float(eps), "alpha": alpha, "steps": int(steps), "norm": "linf"}

    def named(name: str, make: Any, settings: Mapping[str, Any]) -> NamedAttack:
        """``make(seed)`` builds the attack with its own seed, shown in its settings."""
        own_seed = attack_seed(seed, name)
        return NamedAttack(name, make(own_seed), {**common, "seed": own_seed, **settings})

    attacks = [
        named("pgd_ce_restarts", lambda s: PGD(eps, alpha=alpha, steps=steps, restarts=restarts, seed=s),
              {"loss": "cross_entropy", "restarts": int(restarts)}),
        named("pgd_margin",
              lambda s: PGD(eps, alpha=alpha, steps=steps, restarts=restarts, seed=s, loss_fn=margin_loss),
              {"loss": "margin (CW)", "restarts": int(restarts)}),
    ]
    if probes:
        weight_of = dict(zip([p.name for p in probes], probe_weights(weights, len(probes)), strict=True))
        loss = f"cross_entropy + kappa * sum_l w_l * {canonical_measure_name(measure)} at the probes"
        for kappa in kappas:
            attacks.append(named(
                f"feature_pgd_kappa_{float(kappa):g}",
                lambda s, k=kappa: FeaturePGD(eps, probes, k, alpha=alpha, steps=steps, restarts=base_restarts,
                                              seed=s, measure=measure, weights=list(weight_of.values())),
                {"loss": loss, "kappa": float(kappa), "probes": list(weight_of), "probe_weights": dict(weight_of),
                 "restarts": int(base_restarts)}))
    if transfer_source is not None:
        attacks.append(named(
            "transfer",
            lambda s: TransferAttack(transfer_source, PGD(eps, alpha=alpha, steps=steps, restarts=base_restarts,
                                                          seed=s)),
            {"loss": "cross_entropy on the source model", "restarts": int(base_restarts),
             "source": transfer_name or type(transfer_source).__name__}))
    return attacks
