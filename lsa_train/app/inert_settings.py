"""Command-line settings that a switch turned off: said in the report instead of ignored.

``lsa-evaluate autoattack.enabled=false autoattack.n_samples=500`` runs no AutoAttack, so the sample count
does nothing; the run still succeeds, and its report carries one line naming the override and the switch.
Only overrides given on this command line are named (the defaults of a disabled block are not news).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Switch:
    """Keys under ``node`` do nothing while every key of ``switches`` is off (false or null), except the
    keys in ``exempt``."""

    node: str
    switches: tuple[str, ...]
    exempt: tuple[str, ...] = ()


#: Per app (config name), its switches.
SWITCHES: dict[str, tuple[Switch, ...]] = {
    "evaluate": (
        Switch("autoattack", ("autoattack.enabled",), ("autoattack.enabled",)),
        Switch("masking", ("masking.enabled",), ("masking.enabled",)),
        Switch("adaptive_attacks", ("adaptive",), ("adaptive_attacks.steps",)),
        # steps also sets the transfer attack, which runs whenever transfer_from is given
        Switch("adaptive_attacks.steps", ("adaptive", "transfer_from")),
    ),
    "analyze": tuple(Switch(key, ("feature_maps",))
                     for key in ("feature_map_samples", "feature_map_channels", "feature_map_probes")),
}


def inert_overrides(config_name: str, cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """One line per override of ``overrides`` that has no effect because its switch in ``cfg`` is off.

    Args:
        config_name: ``evaluate`` or ``analyze``.
        cfg: The composed config.
        overrides: This command line's overrides (Hydra's task overrides).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        for switch in SWITCHES.get(config_name, ()):
            inside = key == switch.node or key.startswith(switch.node + ".")
            if not inside or key in switch.exempt:
                continue
            values = {name: OmegaConf.select(cfg, name, default=True) for name in switch.switches}
            if all(value is False or value is None for value in values.values()):
                state = " and ".join(f"{name}={'false' if v is False else 'null'}" for name, v in values.items())
                lines.append(f"{override.input_line} has no effect: {state}")
    return lines
