"""One seed per attack of an evaluation, derived from the evaluation's seed and the attack's name.

Two attacks that share a seed share their random starts: a feature-level PGD at a small kappa, or the first
restart of a PGD with restarts, then retraces the plain PGD and adds no information while looking like
another attack. Each attack therefore gets its own seed, a stable function of ``(seed, name)`` (SHA-256, not
Python's per-process salted ``hash``), so an evaluation is reproducible across processes and machines.

The reference PGD (:data:`REFERENCE_ATTACK`) keeps the evaluation seed itself, so its number (and the
masking checks that re-run it) read as before.

Example:
    >>> attack_seed(0, "pgd")
    0
    >>> attack_seed(0, "pgd_margin") == attack_seed(0, "pgd_margin") != attack_seed(0, "pgd_ce_restarts")
    True
"""

from __future__ import annotations

import hashlib

#: The attack that runs with the evaluation seed itself.
REFERENCE_ATTACK = "pgd"
#: Derived seeds lie in ``[0, 2**31 - 1)``, which every generator in use (torch, numpy) accepts.
_SEED_RANGE = 2**31 - 1


def attack_seed(seed: int, name: str) -> int:
    """The seed of attack ``name`` in an evaluation seeded with ``seed``.

    Args:
        seed: The evaluation's seed (``lsa-evaluate seed=...``).
        name: The attack's report name (``pgd_margin``, ``feature_pgd_kappa_1``, ``square``, ...).

    Returns:
        ``seed`` for :data:`REFERENCE_ATTACK`; else the first 8 bytes of ``sha256(f"{seed}/{name}")``
        modulo ``2**31 - 1``: the same in every process, different for different names.
    """
    if name == REFERENCE_ATTACK:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_RANGE
