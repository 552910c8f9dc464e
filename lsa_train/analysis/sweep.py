"""One analysis per perturbation on the same samples: the data behind the paper's figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lsa_train.analysis.analyze import compute_cms, model_device
from lsa_train.analysis.measures import Measure, canonical_measure_name
from lsa_train.analysis.mvl import check_mvl_rule, select_mvl
from lsa_train.analysis.probes import Probe, ProbeSpec, select_probes
from lsa_train.analysis.results import LSAResult

#: The six perturbations of the paper's analysis figures.
PAPER_PERTURBATIONS = ("gaussian", "salt", "pepper", "speckle", "fgsm", "pgd")


def analyze_perturbations(
    model: nn.Module,
    clean: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    perturbations: Sequence[str] | Mapping[str, float] = PAPER_PERTURBATIONS,
    eps: float = 0.1,
    probes: ProbeSpec | Sequence[Probe] = "activations",
    measure: str | Measure = "relative_error",
    eta: float | None = 1.0,
    top_k: int | None = None,
    batch_size: int | None = None,
    seed: int = 313,
) -> dict[str, LSAResult]:
    """Runs :func:`analyze` once per perturbation, sharing the clean forwards.

    Args:
        model: The network.
        clean: Inputs in [0, 1], shape ``(M, ...)``.
        labels: True labels ``(M,)`` for the adversarial perturbations (default: predictions).
        perturbations: Names, or a mapping name -> its own eps.
        eps: Budget for names given without their own.
        seed: Seeds the noise generator, so the figure is repeatable.

    Returns:
        ``{perturbation name: LSAResult}`` in the given order.
    """
    from lsa_train.perturbations import perturb

    budgets = dict(perturbations) if isinstance(perturbations, Mapping) else dict.fromkeys(perturbations, eps)
    check_mvl_rule(None if top_k is not None else eta, top_k)
    measure_name = getattr(measure, "__name__", "custom") if callable(measure) else canonical_measure_name(measure)
    device = model_device(model, clean.device)
    clean = clean.to(device)
    if labels is not None:
        labels = labels.to(device)
    if not (isinstance(probes, Sequence) and probes and isinstance(probes[0], Probe)):
        probes = select_probes(model, clean[:1], probes)  # type: ignore[arg-type]
    generator = torch.Generator(device=device).manual_seed(seed)
    perturbed = [
        perturb(name, clean, budget, model=model, labels=labels, generator=generator)
        for name, budget in budgets.items()
    ]
    # one clean forward per chunk serves every perturbation
    cms = compute_cms(model, probes, clean, perturbed, measure=measure, batch_size=batch_size)
    results: dict[str, LSAResult] = {}
    for (name, budget), cm in zip(budgets.items(), cms):
        results[name] = LSAResult(
            probe_names=[p.name for p in probes],  # type: ignore[union-attr]
            cm=cm,
            mvl=select_mvl(cm, eta=eta, top_k=top_k),
            measure=measure_name,
            perturbation=name,
            eta=None if top_k is not None else eta,
            top_k=top_k,
            metadata={"eps": budget},
        )
    return results
