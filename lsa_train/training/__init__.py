"""Lightning training: the AT-LR module, its regularizer, losses and AWP, and the MVL callback."""

from lsa_train.training.awp import AdversarialWeightPerturbation
from lsa_train.training.callbacks import MVLRefreshCallback
from lsa_train.training.ema import EMAWeightAveraging
from lsa_train.training.losses import BASE_LOSSES, base_loss, mart_loss, trades_kl
from lsa_train.training.module import PAPER_EPS_GRID, LSARegularizedModule, NonFiniteLossError
from lsa_train.training.regularizer import LayerwiseRegularizer
from lsa_train.training.reproducibility import RNGStateCallback

__all__ = [
    "BASE_LOSSES",
    "PAPER_EPS_GRID",
    "AdversarialWeightPerturbation",
    "EMAWeightAveraging",
    "LSARegularizedModule",
    "LayerwiseRegularizer",
    "MVLRefreshCallback",
    "NonFiniteLossError",
    "RNGStateCallback",
    "base_loss",
    "mart_loss",
    "trades_kl",
]
