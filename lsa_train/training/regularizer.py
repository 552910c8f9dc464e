"""The layer-wise regularization term of AT-LR (Algorithm 3 of the paper)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from lsa_train.analysis.measures import Measure, canonical_measure_name, get_measure


class LayerwiseRegularizer:
    """``LR(x, x_adv) = sum_{l in MVL} gamma_l * mean_batch CM(phi_l(x), phi_l(x_adv))``.

    Args:
        gamma: One weight for every MVL probe, or one per probe (the configs' ``lambda``).
            A list must have as many entries as the MVL has probes.
        measure: Registered comparison measure (default relative error) or a callable
            ``(a, b) -> (N,)``.
        stop_clean_grad: Treat the clean representation as a constant (no gradient through
            the clean branch); the clean forward can then run without a graph.
        checkpoint_clean: Keep no activations of the clean branch for the backward and run it
            again there (``torch.utils.checkpoint``): the exact gradient at the cost of one more
            forward up to the deepest MVL probe, with memory close to plain adversarial training.
            Normalization statistics are updated once, as without it.

    Raises:
        ValueError: A negative or non-finite gamma, an empty gamma list, or an unknown measure.
    """

    def __init__(
        self,
        gamma: float | Sequence[float] = 1.0,
        measure: str | Measure = "relative_error",
        stop_clean_grad: bool = False,
        checkpoint_clean: bool = False,
    ) -> None:
        gammas = [gamma] if isinstance(gamma, int | float) else list(gamma)
        if not gammas:
            raise ValueError("gamma (lambda) list is empty; give a number or one value per MVL probe")
        for value in gammas:
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"gamma (lambda) must be a finite number >= 0, got {value!r}")
        self.gamma: float | list[float] = float(gamma) if isinstance(gamma, int | float) else [float(g) for g in gammas]
        self.measure_name = measure if callable(measure) else canonical_measure_name(measure)
        self.measure = get_measure(measure)
        self.stop_clean_grad = stop_clean_grad
        self.checkpoint_clean = checkpoint_clean

    @property
    def is_zero(self) -> bool:
        """Whether every weight is 0 (the term then costs nothing and is skipped)."""
        return all(g == 0 for g in self.gammas_list())

    def gammas_list(self) -> list[float]:
        return [self.gamma] if isinstance(self.gamma, float) else list(self.gamma)

    def gammas_for(self, mvl: Sequence[str]) -> list[float]:
        """One weight per MVL probe.

        Raises:
            ValueError: A per-probe gamma list whose length differs from the MVL's.
        """
        if isinstance(self.gamma, float):
            return [self.gamma] * len(mvl)
        if len(self.gamma) != len(mvl):
            raise ValueError(
                f"gamma (lambda) has {len(self.gamma)} values but the MVL has {len(mvl)} probes {list(mvl)}; "
                "give one value, or one per MVL probe"
            )
        return list(self.gamma)

    def __call__(
        self,
        clean: Mapping[str, torch.Tensor],
        adversarial: Mapping[str, torch.Tensor],
        mvl: Sequence[str],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Computes the term.

        Args:
            clean: Probe name -> clean representation ``(N, ...)``.
            adversarial: Probe name -> adversarial representation ``(N, ...)``.
            mvl: The probes to regularize (keys of both mappings).

        Returns:
            The scalar term (float32, differentiable) and the batch-mean CM per probe (detached).
        """
        total = torch.zeros((), device=next(iter(adversarial.values())).device)
        per_probe: dict[str, torch.Tensor] = {}
        for name, gamma in zip(mvl, self.gammas_for(mvl)):
            a = clean[name].detach() if self.stop_clean_grad else clean[name]
            cm = self.measure(a, adversarial[name]).mean()
            per_probe[name] = cm.detach()
            total = total + gamma * cm
        return total, per_probe

    def __repr__(self) -> str:
        return (
            f"LayerwiseRegularizer(gamma={self.gamma}, measure={self.measure_name!r}, "
            f"stop_clean_grad={self.stop_clean_grad}, checkpoint_clean={self.checkpoint_clean})"
        )
