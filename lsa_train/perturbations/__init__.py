"""Perturbations for the analysis: statistical noise and adversarial attacks."""

from lsa_train.perturbations.registry import (
    ADVERSARIAL,
    PERTURBATIONS,
    STATISTICAL,
    gaussian,
    list_perturbations,
    pepper,
    perturb,
    salt,
    speckle,
)

__all__ = [
    "ADVERSARIAL",
    "PERTURBATIONS",
    "STATISTICAL",
    "gaussian",
    "list_perturbations",
    "pepper",
    "perturb",
    "salt",
    "speckle",
]
