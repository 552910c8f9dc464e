"""Worst case per sample over several attacks: a sample is robust only if every attack failed on it.

Each attack contributes an :class:`AttackOutcome`: per sample of the samples it ran on, whether the
model still classified its adversarial input correctly. :func:`worst_case` intersects them on the
samples every attack saw (never mixing subsets), counts a sample as robust only if it is classified
correctly clean and under every attack (AutoAttack's convention), and says, for the samples lost,
which attack broke them: the first one in run order that did (``first_broken_by``) and those broken
by one attack alone (``only_broken_by``).

Example:
    >>> clean = torch.tensor([True, True, True, False])
    >>> pgd = AttackOutcome("pgd", torch.tensor([True, False, True, False]), torch.arange(4))
    >>> transfer = AttackOutcome("transfer", torch.tensor([False, False, True, True]), torch.arange(4))
    >>> worst_case(clean, [pgd, transfer]).accuracy   # only sample 2 survives both
    0.25
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttackOutcome:
    """What one attack did, per sample.

    Attributes:
        name: The attack's name in reports (unique among the outcomes of one evaluation).
        correct: ``(n,)`` bool: the adversarial input of each sample was classified correctly.
        indices: ``(n,)`` int64: the position of each sample in the evaluated stream (0-based).
        settings: The attack's parameters, for the report.
        accuracy: Its own number as reported (default: ``correct.mean()``); AutoAttack's counts a
            sample as robust only if it is also correct clean, PGD's does not.
        broken_by: For ensembles (AutoAttack): component name -> ``(n,)`` bool, the samples that
            component broke first; used to name the component in :attr:`WorstCase.first_broken_by`.
    """

    name: str
    correct: Tensor
    indices: Tensor
    settings: Mapping[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    broken_by: Mapping[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.correct.ndim != 1 or self.indices.shape != self.correct.shape:
            raise ValueError(
                f"attack {self.name!r}: correct and indices must be vectors of the same length, got "
                f"{tuple(self.correct.shape)} and {tuple(self.indices.shape)}"
            )
        if self.correct.numel() == 0:
            raise ValueError(f"attack {self.name!r} ran on no samples")
        for component, mask in (self.broken_by or {}).items():
            if mask.shape != self.correct.shape:
                raise ValueError(f"attack {self.name!r}: broken_by[{component!r}] has shape {tuple(mask.shape)}")

    @property
    def n_samples(self) -> int:
        """How many samples the attack ran on."""
        return int(self.correct.numel())

    @property
    def own_accuracy(self) -> float:
        """:attr:`accuracy`, or the fraction of its samples it left correct."""
        if self.accuracy is not None:
            return float(self.accuracy)
        return int(self.correct.sum()) / self.n_samples


@dataclass
class WorstCase:
    """The worst case over the attacks of one evaluation (accuracies are fractions).

    Attributes:
        accuracy: Fraction of the common samples classified correctly clean and under every attack.
        n_samples: The common samples: those every attack ran on.
        n_evaluated: Every sample evaluated clean.
        attacks: The attacks, in run order.
        attack_samples: Per attack, how many samples it ran on.
        accuracy_on_common: Per attack, the fraction of the common samples correct clean and under it.
        first_broken_by: Per attack (or ensemble component, ``"autoattack/apgd-ce"``), the common
            samples correct clean that it was the first, in run order, to break.
        only_broken_by: Per attack, the common samples correct clean that it alone broke.
        misclassified_clean: Common samples already misclassified clean (lost without an attack).
        excluded: Attacks that ran but are not in the worst case, with why (an optional attack whose
            samples share none with the others', see :func:`worst_case`).
    """

    accuracy: float
    n_samples: int
    n_evaluated: int
    attacks: list[str]
    attack_samples: dict[str, int]
    accuracy_on_common: dict[str, float]
    first_broken_by: dict[str, int]
    only_broken_by: dict[str, int]
    misclassified_clean: int
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def same_samples(self) -> bool:
        """Whether every attack ran on every evaluated sample."""
        return all(n == self.n_evaluated for n in self.attack_samples.values())

    @property
    def n_lost(self) -> int:
        """Common samples correct clean that some attack broke."""
        return sum(self.first_broken_by.values())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorstCase:
        """Inverse of :meth:`to_dict` (the derived ``same_samples`` and ``n_lost`` are recomputed)."""
        derived = {"same_samples", "n_lost"}
        return cls(**{key: value for key, value in data.items() if key not in derived})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field plus ``same_samples`` and ``n_lost``."""
        return {
            "accuracy": self.accuracy,
            "n_samples": self.n_samples,
            "n_evaluated": self.n_evaluated,
            "same_samples": self.same_samples,
            "attacks": list(self.attacks),
            "attack_samples": dict(self.attack_samples),
            "accuracy_on_common": dict(self.accuracy_on_common),
            "misclassified_clean": self.misclassified_clean,
            "n_lost": self.n_lost,
            "first_broken_by": dict(self.first_broken_by),
            "only_broken_by": dict(self.only_broken_by),
            "excluded": dict(self.excluded),
        }


def worst_case(
    clean_correct: Tensor, outcomes: Sequence[AttackOutcome], optional: Collection[str] = ()
) -> WorstCase:
    """Intersects the attacks' per-sample results on the samples every attack ran on.

    Args:
        clean_correct: ``(N,)`` bool: sample ``i`` of the evaluated stream is classified correctly clean.
        outcomes: One per attack, in run order (the order ``first_broken_by`` credits them in); their
            ``indices`` are positions in ``[0, N)``.
        optional: Names of attacks run on a subset of their own choosing (the masking checks' Square): one
            whose samples share none with the samples every other attack saw is left out, and named with
            the reason in :attr:`WorstCase.excluded`, instead of leaving no sample to count.

    Returns:
        The :class:`WorstCase`; with no attack, the clean accuracy on all samples.

    Raises:
        ValueError: Duplicate attack names, indices out of range or repeated, or no sample that every
            attack (but an excluded optional one) ran on.
    """
    clean_correct = clean_correct.detach().to("cpu", torch.bool)
    n_evaluated = int(clean_correct.numel())
    names = [o.name for o in outcomes]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    common = torch.ones(n_evaluated, dtype=torch.bool)
    full: dict[str, Tensor] = {}  # per attack: correct, spread over the stream (False where it did not run)
    ran: dict[str, Tensor] = {}
    for outcome in outcomes:
        indices = outcome.indices.detach().to("cpu", torch.long)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_evaluated):
            raise ValueError(f"attack {outcome.name!r}: sample indices outside [0, {n_evaluated})")
        seen = torch.zeros(n_evaluated, dtype=torch.bool)
        seen[indices] = True
        if int(seen.sum()) != indices.numel():
            raise ValueError(f"attack {outcome.name!r}: repeated sample indices")
        correct = torch.zeros(n_evaluated, dtype=torch.bool)
        correct[indices] = outcome.correct.detach().to("cpu", torch.bool)
        full[outcome.name], ran[outcome.name] = correct, seen
        if outcome.name not in optional:
            common &= seen
    excluded: dict[str, str] = {}
    for name in [n for n in names if n in optional]:
        if int((common & ran[name]).sum()) == 0:
            excluded[name] = (f"its {int(ran[name].sum())} samples share none with the {int(common.sum())} samples "
                              "every other attack ran on")
        else:
            common &= ran[name]
    if excluded:
        outcomes = [o for o in outcomes if o.name not in excluded]
        names = [o.name for o in outcomes]
        full = {name: full[name] for name in names}
    n_common = int(common.sum())
    if n_common == 0:
        raise ValueError(f"no sample was attacked by every attack ({names}); the worst case is undefined")

    robust = clean_correct & common
    for correct in full.values():
        robust &= correct
    lost = common & clean_correct & ~robust
    first: dict[str, int] = {}
    unattributed = lost.clone()
    for outcome in outcomes:
        broken = unattributed & ~full[outcome.name]
        for component, mask in (outcome.broken_by or {}).items():
            spread = torch.zeros(n_evaluated, dtype=torch.bool)
            spread[outcome.indices.to("cpu", torch.long)] = mask.detach().to("cpu", torch.bool)
            hit = broken & spread
            first[f"{outcome.name}/{component}"] = int(hit.sum())
            broken &= ~hit
            unattributed &= ~hit
        if outcome.broken_by is None or int(broken.sum()):
            first[outcome.name] = int(broken.sum())  # for an ensemble: broken, but by no listed component
        unattributed &= ~broken
    breakers = torch.stack([~full[name] for name in names]).sum(dim=0) if names else torch.zeros(n_evaluated)
    only = {name: int((lost & ~full[name] & (breakers == 1)).sum()) for name in names}
    return WorstCase(
        accuracy=int(robust.sum()) / n_common,
        n_samples=n_common,
        n_evaluated=n_evaluated,
        attacks=names,
        attack_samples={o.name: o.n_samples for o in outcomes},
        accuracy_on_common={
            name: int((common & clean_correct & full[name]).sum()) / n_common for name in names
        },
        first_broken_by=first,
        only_broken_by=only,
        misclassified_clean=int((common & ~clean_correct).sum()),
        excluded=excluded,
    )


def describe(case: WorstCase) -> list[str]:
    """Plain sentences for reports: which samples the worst case is on and which attacks broke them."""
    lines: list[str] = [f"It covers {len(case.attacks)} attacks: {', '.join(case.attacks)}."]
    lines += [f"Not in it: {name}, which ran but {why}." for name, why in case.excluded.items()]
    if case.same_samples:
        lines.append(f"Every attack ran on all {case.n_evaluated} samples.")
    else:
        sizes = ", ".join(f"{name} on {n}" for name, n in case.attack_samples.items())
        lines.append(
            f"The attacks ran on different samples ({sizes} of {case.n_evaluated}): the worst case is computed "
            f"on the {case.n_samples} samples every attack saw."
        )
    lines.append(
        f"Of those {case.n_samples}: {case.misclassified_clean} misclassified clean, {case.n_lost} broken by an "
        f"attack, {case.n_samples - case.misclassified_clean - case.n_lost} robust to every attack."
    )
    if case.n_lost:
        first = ", ".join(f"{name} {n}" for name, n in case.first_broken_by.items() if n)
        lines.append(f"First broken by (in run order): {first}.")
        only = ", ".join(f"{name} {n}" for name, n in case.only_broken_by.items() if n)
        lines.append(f"Broken by one attack alone: {only}." if only else "Broken by one attack alone: none.")
    return lines
