"""Structured-config schemas (dataclasses) that type-check the ``attack`` and ``regularizer.mvl`` nodes.

Each ``conf/attack/<name>.yaml`` starts its defaults list with ``/schema/attack@_here_: <name>``, and
``conf/regularizer/*.yaml`` with ``/schema/mvl@mvl: default``. Hydra then rejects, at compose time and
in one line, a typo'd key (``attack.epss=0.1``: "Key 'epss' not in 'PGDConf'"), a value of the wrong
type (``attack.steps=1.5``) and an unknown choice (``attack.norm=l3``, ``regularizer.mvl.mode=autoo``), and
``attack.clip=forward`` on an attack without that option (``attack=fgsm``: "Could not override 'attack.clip'").
Range checks (``eps >= 0``, list lengths, ...) are in :mod:`lsa_train.app.validation`.

The ``regularizer`` node itself has no dataclass: its user-facing key ``lambda`` (the paper's name) is
a Python keyword, which a dataclass field cannot be. Hydra's struct mode still rejects typo'd keys.

:func:`register_schemas` runs on import of this module and of ``lsa_train.conf`` (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

#: Keys of an attack config consumed by the app, not passed to the attack class.
ATTACK_APP_KEYS: tuple[str, ...] = ("base_loss", "eval_eps")


class BaseLoss(Enum):
    """Outer-minimization loss: ``ce`` (Madry AT), ``trades`` (clean CE + beta KL), ``mart`` (boosted CE +
    weighted KL), ``normal`` (clean CE)."""

    ce = "ce"
    trades = "trades"
    mart = "mart"
    normal = "normal"


class Norm(Enum):
    """Threat model of PGD/APGD."""

    linf = "linf"
    l2 = "l2"


class CraftMode(Enum):
    """Model mode while crafting adversarial examples."""

    eval = "eval"
    train = "train"
    keep = "keep"


class Clip(Enum):
    """Where PGD, MART's and TRADES' attacks keep the input in ``[clip_min, clip_max]``.

    ``project`` (default): the iterate is clamped after every step (the reference code).
    ``forward``: an ablation that *weakens* the training attack: only the model's input is clamped,
    so pixels pushed outside the range get no gradient and stop moving (see
    :class:`lsa_train.attacks.Attack`).
    """

    project = "project"
    forward = "forward"


class APGDLoss(Enum):
    """Loss APGD maximizes."""

    ce = "ce"
    dlr = "dlr"


class MVLMode(Enum):
    """How the Most Vulnerable Layers are chosen.

    ``auto``: LSA analysis at fit start and every ``every_n_epochs`` epochs; ``once``: analysis at fit
    start only; ``fixed``: the ``layers`` list (e.g. ``[2]`` = the paper's LR-L2); ``none``: no MVL
    and no analysis (only with ``lambda`` 0, i.e. plain adversarial training).
    """

    auto = "auto"
    once = "once"
    fixed = "fixed"
    none = "none"


@dataclass
class AttackConf:
    """Keys common to every attack config.

    Attributes:
        _target_: The attack class in :mod:`lsa_train.attacks`.
        eps: Training perturbation budget (inputs are in ``[0, 1]``).
        base_loss: Outer loss paired with this attack (``trades`` for ``attack=trades``, ``normal``
            for ``attack=none``, else ``ce``).
        eval_eps: Budget of the PGD used for ``val/acc_pgd`` and ``test/acc_pgd``; defaults to ``eps``.
        clip_min, clip_max: Valid input range.
        craft_mode: Model mode while crafting (``eval``: BatchNorm uses running statistics).
        seed: Seed of the attack's random starts (``null``: the global, seeded RNG).
    """

    _target_: str = MISSING
    eps: float = MISSING
    base_loss: BaseLoss = BaseLoss.ce
    eval_eps: float = MISSING
    clip_min: float = 0.0
    clip_max: float = 1.0
    craft_mode: CraftMode = CraftMode.eval
    seed: int | None = None


@dataclass
class NoAttackConf(AttackConf):
    """``attack=none``: normal training (``base_loss=normal``)."""

    _target_: str = "lsa_train.attacks.NoAttack"
    eps: float = 0.0
    base_loss: BaseLoss = BaseLoss.normal


@dataclass
class FGSMConf(AttackConf):
    """``attack=fgsm``: one signed-gradient step of size ``eps``."""

    _target_: str = "lsa_train.attacks.FGSM"


@dataclass
class FGSMRSConf(AttackConf):
    """``attack=fgsm_rs``: FGSM from a random start ("fast is better than free", AT-FAST)."""

    _target_: str = "lsa_train.attacks.FGSMRS"
    alpha: float | None = None


@dataclass
class PGDConf(AttackConf):
    """``attack=pgd`` / ``attack=pgd_l2``: projected gradient descent."""

    _target_: str = "lsa_train.attacks.PGD"
    alpha: float | None = None
    steps: int = 10
    random_start: bool = True
    restarts: int = 1
    norm: Norm = Norm.linf
    clip: Clip = Clip.project


@dataclass
class APGDConf(AttackConf):
    """``attack=apgd``: Auto-PGD (step-size free)."""

    _target_: str = "lsa_train.attacks.APGD"
    steps: int = 10
    restarts: int = 1
    norm: Norm = Norm.linf
    rho: float = 0.75
    loss: APGDLoss = APGDLoss.ce


@dataclass
class TRADESConf(AttackConf):
    """``attack=trades``: the TRADES KL inner maximization (``base_loss=trades``)."""

    _target_: str = "lsa_train.attacks.TRADESAttack"
    alpha: float | None = None
    steps: int = 10
    base_loss: BaseLoss = BaseLoss.trades
    clip: Clip = Clip.project


@dataclass
class MARTConf(AttackConf):
    """``attack=mart``: PGD on CE from a small Gaussian start (``base_loss=mart``)."""

    _target_: str = "lsa_train.attacks.MARTAttack"
    alpha: float | None = None
    steps: int = 10
    base_loss: BaseLoss = BaseLoss.mart
    clip: Clip = Clip.project


@dataclass
class MVLConf:
    """``regularizer.mvl``: which probes the layer-wise term regularizes, and how they are chosen.

    Attributes:
        mode: See :class:`MVLMode`.
        probes: Candidate probes: ``activations``, ``learnable`` (conv/linear outputs), or a list of
            module-name patterns.
        eta: Algorithm 1 cut-off (``auto``/``once``; ignored when ``top_k`` is set).
        top_k: Keep the ``k`` most vulnerable probes instead of the ``eta`` rule.
        min_layers: With the ``eta`` rule, keep at least this many probes (the most vulnerable when fewer
            pass the cut-off); 0 lets the rule select nothing, which turns the LSA term off until the next
            refresh.
        layers: The fixed MVL (``mode=fixed``): probe indices or names, e.g. ``[2]``.
        every_n_epochs: Re-analysis period of ``mode=auto``.
        num_samples: Size of the held-out analysis subset.
        perturbation: Attack used by the analysis (at the training eps).
        perturbation_kwargs: Extra arguments of that attack (e.g. ``{steps: 10}``).
        log_analysis: Analyse (and plot) every ``every_n_epochs`` epochs although the MVL it picks is not
            regularized: ``None`` (default) does so for ``mode=fixed`` and not for ``lambda`` 0 (the analysis
            would cost time for nothing); ``True`` runs it as a measurement in both cases, ``False`` in neither.
        plot: Write the per-layer figure of every analysis.
        dirpath: Where figures/CSVs go (default ``${paths.output_dir}/lsa`` in the configs).
    """

    mode: MVLMode = MVLMode.auto
    probes: Any = "activations"
    eta: float | None = 1.0
    top_k: int | None = None
    min_layers: int = 1
    layers: list[Any] | None = None
    every_n_epochs: int = 1
    num_samples: int = 64
    perturbation: str = "pgd"
    perturbation_kwargs: dict[str, Any] = field(default_factory=dict)
    log_analysis: bool | None = None
    plot: bool = True
    dirpath: str | None = None


#: Attack schema per ``conf/attack`` option.
ATTACK_SCHEMAS: dict[str, type[AttackConf]] = {
    "none": NoAttackConf,
    "fgsm": FGSMConf,
    "fgsm_rs": FGSMRSConf,
    "pgd": PGDConf,
    "pgd_l2": PGDConf,
    "apgd": APGDConf,
    "trades": TRADESConf,
    "mart": MARTConf,
}


def register_schemas() -> None:
    """Stores the schemas in Hydra's ConfigStore (groups ``schema/attack`` and ``schema/mvl``)."""
    store = ConfigStore.instance()
    for name, node in ATTACK_SCHEMAS.items():
        store.store(group="schema/attack", name=name, node=node)
    store.store(group="schema/mvl", name="default", node=MVLConf)


register_schemas()
