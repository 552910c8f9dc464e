"""Layer Sustainability Analysis: probes, capture, measures, MVL, results and plots.

Plain PyTorch: usable in a notebook without Lightning or Hydra.
"""

from lsa_train.analysis.analyze import analyze, compute_cm, compute_cms
from lsa_train.analysis.capture import ProbeCapture
from lsa_train.analysis.distribution import plot_cm_distribution
from lsa_train.analysis.feature_maps import plot_feature_maps
from lsa_train.analysis.history import MVLHistoryTable, plot_mvl_history
from lsa_train.analysis.measures import (
    MEASURES,
    cosine_distance,
    get_measure,
    list_measures,
    mse,
    relative_error,
    relative_error_pairwise,
)
from lsa_train.analysis.mvl import select_mvl
from lsa_train.analysis.plots import plot_layer_curves
from lsa_train.analysis.probes import (
    Probe,
    ProbeCoverageWarning,
    ProbeSelectionError,
    list_probes,
    select_probes,
    select_probes_and_notes,
)
from lsa_train.analysis.results import LSAResult
from lsa_train.analysis.sweep import PAPER_PERTURBATIONS, analyze_perturbations

__all__ = [
    "MEASURES",
    "PAPER_PERTURBATIONS",
    "LSAResult",
    "MVLHistoryTable",
    "Probe",
    "ProbeCapture",
    "ProbeCoverageWarning",
    "ProbeSelectionError",
    "analyze",
    "analyze_perturbations",
    "compute_cm",
    "compute_cms",
    "cosine_distance",
    "get_measure",
    "list_measures",
    "list_probes",
    "mse",
    "plot_cm_distribution",
    "plot_feature_maps",
    "plot_layer_curves",
    "plot_mvl_history",
    "relative_error",
    "relative_error_pairwise",
    "select_mvl",
    "select_probes",
    "select_probes_and_notes",
]
