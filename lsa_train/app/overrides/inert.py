"""Command-line settings that a switch turned off: said in the summary and report instead of ignored.

``lsa-evaluate autoattack.enabled=false autoattack.n_samples=500`` runs no AutoAttack, so the sample count
does nothing; the run still succeeds, and its report carries one line naming the override and the switch.
Only overrides given on this command line are named (the defaults of a disabled block are not news).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from lsa_train.app.overrides.command_line import parse_overrides


@dataclass(frozen=True)
class Switch:
    """Keys under ``node`` do nothing while ``why_off(cfg)`` gives a reason (``None``: they act), except the
    keys in ``exempt``."""

    node: str
    why_off: Callable[[DictConfig], str | None]
    exempt: tuple[str, ...] = ()


def _all_off(*keys: str) -> Callable[[DictConfig], str | None]:
    """Off while every key is false or null."""

    def why(cfg: DictConfig) -> str | None:
        values = {key: OmegaConf.select(cfg, key, default=True) for key in keys}
        if not all(value is False or value is None for value in values.values()):
            return None
        return " and ".join(f"{key}={'false' if value is False else 'null'}" for key, value in values.items())

    return why


def _zero(key: str) -> Callable[[DictConfig], str | None]:
    """Off while ``key`` is 0."""
    return lambda cfg: f"{key}=0" if OmegaConf.select(cfg, key, default=None) == 0 else None


def _other_than(key: str, value: str) -> Callable[[DictConfig], str | None]:
    """Off while ``key`` is not ``value``."""

    def why(cfg: DictConfig) -> str | None:
        current = OmegaConf.select(cfg, key, default=None)
        current = getattr(current, "value", current)  # an enum of a structured config
        return None if str(current) == value else f"{key}={current} (it acts with {key}={value})"

    return why


def _given(key: str) -> Callable[[DictConfig], str | None]:
    """Off while ``key`` is set (it takes the decision instead)."""

    def why(cfg: DictConfig) -> str | None:
        value = OmegaConf.select(cfg, key, default=None)
        return None if value is None else f"{key}={value} selects the MVL instead"

    return why


def _mvl_analysis_skipped(cfg: DictConfig) -> str | None:
    """Off while ``lambda`` is 0 and the MVL analysis is not asked for as a measurement (nothing under
    ``regularizer`` acts then; see :func:`lsa_train.app.builders.mvl_analysis_plan`)."""
    from lsa_train.app.builders import mvl_analysis_plan

    regularizer = OmegaConf.select(cfg, "regularizer")
    if regularizer is None or OmegaConf.select(regularizer, "mvl.mode") is None or "lambda" not in regularizer:
        return None
    analyse, note = mvl_analysis_plan(regularizer)
    return None if analyse or note is None else note.split(";")[0]


def _no_augmentation(cfg: DictConfig) -> str | None:
    """Off for the torchvision datasets that have no augmentation (the MNIST family)."""
    target = str(OmegaConf.select(cfg, "data._target_", default=""))
    name = OmegaConf.select(cfg, "data.name", default=None)
    if target.endswith("TorchvisionDataModule") and name in ("mnist", "fashion_mnist"):
        return f"data.name={name} has no training augmentation"
    return None


#: Per app (config name), its switches.
SWITCHES: dict[str, tuple[Switch, ...]] = {
    "train": (
        Switch("awp", _zero("awp.gamma"), ("awp.gamma",)),
        Switch("data.crop_padding", _all_off("data.augment")),
        Switch("data.augment", _no_augmentation),
        Switch("module.mart_beta", _other_than("attack.base_loss", "mart")),
        Switch("module.trades_beta", _other_than("attack.base_loss", "trades")),
        Switch("regularizer.mvl.eta", _given("regularizer.mvl.top_k")),
        Switch("regularizer.mvl.min_layers", _given("regularizer.mvl.top_k")),
        Switch("regularizer", _mvl_analysis_skipped,
               ("regularizer", "regularizer.lambda", "regularizer.mvl.mode", "regularizer.mvl.log_analysis")),
    ),
    "evaluate": (
        Switch("autoattack", _all_off("autoattack.enabled"), ("autoattack.enabled",)),
        Switch("masking", _all_off("masking.enabled"), ("masking.enabled",)),
        Switch("adaptive_attacks", _all_off("adaptive"), ("adaptive_attacks.steps",)),
        # steps also sets the transfer attack, which runs whenever transfer_from is given
        Switch("adaptive_attacks.steps", _all_off("adaptive", "transfer_from")),
    ),
    "analyze": (
        *(Switch(key, _all_off("feature_maps"))
          for key in ("feature_map_samples", "feature_map_channels", "feature_map_probes")),
        Switch("eta", _given("top_k")),
    ),
}


def inert_overrides(config_name: str, cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """One line per override of ``overrides`` that has no effect because its switch in ``cfg`` is off.

    Args:
        config_name: ``train``, ``evaluate`` or ``analyze``.
        cfg: The composed config.
        overrides: This command line's overrides (Hydra's task overrides).
    """
    lines = []
    for override in parse_overrides(overrides):
        key = override.key_or_group
        for switch in SWITCHES.get(config_name, ()):
            inside = key == switch.node or key.startswith(switch.node + ".")
            if not inside or key in switch.exempt:
                continue
            reason = switch.why_off(cfg)
            if reason is not None:
                lines.append(f"{override.input_line} has no effect: {reason}")
    return lines
