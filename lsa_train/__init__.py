"""lsa_train: Layer Sustainability Analysis and layer-wise regularized adversarial training.

Heavy parts (Lightning, Hydra, torchvision models) load on first use, so ``import
lsa_train`` stays fast; ``from lsa_train import LSARegularizedModule`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "analyze": "lsa_train.analysis",
    "analyze_perturbations": "lsa_train.analysis",
    "compute_cm": "lsa_train.analysis",
    "compute_cms": "lsa_train.analysis",
    "list_probes": "lsa_train.analysis",
    "select_probes": "lsa_train.analysis",
    "select_mvl": "lsa_train.analysis",
    "plot_layer_curves": "lsa_train.analysis",
    "ProbeCapture": "lsa_train.analysis",
    "LSAResult": "lsa_train.analysis",
    "LayerSustainabilityAnalysis": "lsa_train.legacy",
    "perturb": "lsa_train.perturbations",
    "create_attack": "lsa_train.attacks",
    "list_attacks": "lsa_train.attacks",
    "create_model": "lsa_train.models",
    "list_models": "lsa_train.models",
    "create_datamodule": "lsa_train.data",
    "LSARegularizedModule": "lsa_train.training",
    "LayerwiseRegularizer": "lsa_train.training",
    "MVLRefreshCallback": "lsa_train.training",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lsa_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
