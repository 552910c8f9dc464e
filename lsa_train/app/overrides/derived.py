"""Settings derived from what the command line did not name: ``attack.alpha`` follows a changed ``attack.eps``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from lsa_train.app.overrides.command_line import names_key


def _attack_option_file(target: str) -> tuple[str, DictConfig] | None:
    """The ``conf/attack`` option whose ``_target_`` is ``target`` (name and its YAML), if any.

    Found by target rather than by Hydra's group choice, so that a resume (whose attack comes from the
    run's saved config, not from this command line's choice) finds the same file."""
    from importlib import resources

    folder = resources.files("lsa_train.conf") / "attack"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            node = OmegaConf.create(entry.read_text())
            if isinstance(node, DictConfig) and str(node.get("_target_")) == target:
                return entry.name[: -len(".yaml")], node
    return None


def derive_attack_alpha(attack: DictConfig, overrides: Sequence[str]) -> str | None:
    """Scales the step size of the attack's own config file to the eps actually used.

    ``conf/attack/pgd.yaml`` has ``eps: 0.1`` and ``alpha: 0.03``: a fixed step meant for that eps. When
    the composed ``attack.eps`` differs from the file's (``attack.eps=0.2`` on the command line, or an
    experiment preset) while ``attack.alpha`` still holds the file's value and no override names
    ``attack.alpha``, that step would be kept for another budget (too small to reach the boundary in
    ``steps`` steps, or as large as eps). It becomes ``alpha_file * eps / eps_file`` instead: the ratio
    the file was written with (0.3 x eps for PGD, MART and TRADES; 1.25 x eps for FGSM-RS, Wong et al.),
    and the summary says so. An ``attack.alpha`` named on the command line (or set to another value by a
    preset) is kept as given.

    Args:
        attack: ``cfg.attack``; ``attack.alpha`` is updated in place when derived.
        overrides: The command-line overrides that made ``attack`` (for a resume: the run's own first).

    Returns:
        The summary line saying what was derived, or ``None`` when ``alpha`` was kept.
    """
    alpha, eps = attack.get("alpha"), attack.get("eps")
    if alpha is None or eps is None or float(eps) <= 0 or names_key(overrides, "attack.alpha"):
        return None  # eps 0 crafts nothing: a step of 0 would only be refused by the attack
    found = _attack_option_file(str(attack.get("_target_")))
    if found is None:
        return None
    name, own = found
    own_eps, own_alpha = own.get("eps"), own.get("alpha")
    if not isinstance(own_eps, int | float) or not isinstance(own_alpha, int | float) or own_eps <= 0:
        return None
    if not math.isclose(float(alpha), float(own_alpha)) or math.isclose(float(eps), float(own_eps)):
        return None
    derived = float(own_alpha) * float(eps) / float(own_eps)
    attack.alpha = derived
    return (f"attack.alpha={derived:.6g} derived for attack.eps={float(eps):g}: conf/attack/{name}.yaml's "
            f"alpha {float(own_alpha):g} is meant for its eps {float(own_eps):g}, so it was scaled to "
            f"{float(own_alpha) / float(own_eps):g} x eps; name attack.alpha to set the step yourself")
