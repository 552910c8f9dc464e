"""Inner-maximization attacks for adversarial training and robustness evaluation.

Example:
    >>> from lsa_train.attacks import create_attack
    >>> atk = create_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=10)
    >>> x_adv = atk(model, images, labels)   # model mode, grads and BN stats left untouched

Registered keys: ``"none"``, ``"fgsm"``, ``"fgsm_rs"``, ``"pgd"``, ``"pgd_l2"``, ``"apgd"``,
``"trades"``, ``"mart"`` (see :func:`list_attacks`).
Importing this package imports every attack module, which registers the attacks.
"""

from lsa_train.attacks.apgd import APGD
from lsa_train.attacks.base import (
    CRAFT_MODES,
    Attack,
    BufferSnapshot,
    LossFn,
    batchnorm_buffers_snapshot,
    buffers_snapshot,
    preserved_model_state,
    restore_buffers,
)
from lsa_train.attacks.fgsm import FGSM
from lsa_train.attacks.fgsm_rs import FGSMRS
from lsa_train.attacks.mart import MARTAttack
from lsa_train.attacks.no_attack import NoAttack
from lsa_train.attacks.pgd import PGD, PGDL2
from lsa_train.attacks.registry import ATTACKS, create_attack, list_attacks, register_attack
from lsa_train.attacks.trades import TRADESAttack

__all__ = [
    "APGD",
    "ATTACKS",
    "CRAFT_MODES",
    "FGSM",
    "FGSMRS",
    "PGD",
    "PGDL2",
    "Attack",
    "BufferSnapshot",
    "LossFn",
    "MARTAttack",
    "NoAttack",
    "TRADESAttack",
    "batchnorm_buffers_snapshot",
    "buffers_snapshot",
    "create_attack",
    "list_attacks",
    "preserved_model_state",
    "register_attack",
    "restore_buffers",
]
