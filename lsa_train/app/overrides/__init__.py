"""What the command line said and what it does: the one place for ``key=value``, ``+key``, ``group=option``.

One module per job:

* :mod:`~lsa_train.app.overrides.command_line`: reading it. The current Hydra job's overrides and group
  choices, Hydra's parser, a run's first command line (``<run>/.hydra/overrides.yaml``).
* :mod:`~lsa_train.app.overrides.added`: ``+key``/``++key`` must add a key that something reads (else a
  one-line error with the nearest known key), and Hydra's "Could not override" gets the same suggestion.
* :mod:`~lsa_train.app.overrides.inert`: a setting given while the switch it belongs to is off is a line of
  the summary and report (never silently ignored).
* :mod:`~lsa_train.app.overrides.derived`: values derived from what was not named (``attack.alpha``
  follows a changed ``attack.eps``).
* :mod:`~lsa_train.app.overrides.saved_config`: this command line applied onto a saved run config (a resume,
  :mod:`lsa_train.app.resume`): group switches merged key by key, the trained network kept.

Nothing here imports torch; Hydra is imported when a function needs it.
"""

from lsa_train.app.overrides.added import (
    OPEN_NODES,
    PROGRAM_CONFIGS,
    check_added_keys,
    suggest_for_failed_override,
)
from lsa_train.app.overrides.command_line import (
    hydra_choice,
    hydra_groups,
    hydra_task_overrides,
    names_key,
    parse_overrides,
    run_first_overrides,
)
from lsa_train.app.overrides.derived import derive_attack_alpha
from lsa_train.app.overrides.inert import SWITCHES, Switch, inert_overrides
from lsa_train.app.overrides.saved_config import (
    COMMAND_LINE_KEYS,
    RESUMABLE_GROUPS,
    apply_overrides,
    merge_group_switch,
)

__all__ = [
    "COMMAND_LINE_KEYS",
    "OPEN_NODES",
    "PROGRAM_CONFIGS",
    "RESUMABLE_GROUPS",
    "SWITCHES",
    "Switch",
    "apply_overrides",
    "check_added_keys",
    "derive_attack_alpha",
    "hydra_choice",
    "hydra_groups",
    "hydra_task_overrides",
    "inert_overrides",
    "merge_group_switch",
    "names_key",
    "parse_overrides",
    "run_first_overrides",
    "suggest_for_failed_override",
]
