"""``lsa-evaluate adaptive=true`` / ``transfer_from=...``: the attacks that know the defense, from the config.

Finds what those attacks need and says so when something is missing, instead of leaving it out silently:

- the probes of the feature-level attack: ``adaptive_attacks.probes`` when given, else the MVL the run
  trained on, read from its checkpoint (``checkpoint["lsa_train"]["mvl"]``, written by
  :class:`~lsa_train.training.LSARegularizedModule`); a run without the LSA term, an empty MVL or a
  ``model=``/``data=`` evaluation without the override skips that attack, with the reason in the report;
- the per-probe weights of its feature term: on the run's MVL, the run's ``regularizer.lambda`` (one number
  for every probe, or one per MVL probe, as :class:`~lsa_train.training.LayerwiseRegularizer` weighted them),
  so at kappa 1 the attacker maximizes the term the defense minimized; on probes named by
  ``adaptive_attacks.probes``, 1 each (the run put no weight on them); both stated in the report;
- the source model of the transfer attack: ``transfer_from=<checkpoint or run dir of an lsa-train run>``,
  loaded by :func:`lsa_train.app.checkpoint_loading.load_run` with the same ``trust_checkpoint`` as
  ``ckpt_path``.

The attacks themselves are :func:`lsa_train.evaluation.adaptive.adaptive_attacks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lsa_train.app.errors import ConfigError, one_line
from lsa_train.evaluation.adaptive import NamedAttack, adaptive_attacks

#: Report names of the attacks this module may skip.
FEATURE_ATTACK = "feature_pgd"
TRANSFER_ATTACK = "transfer"


@dataclass
class AdaptiveSetup:
    """The extra attacks of one evaluation, those skipped (with why) and facts for the report."""

    attacks: list[NamedAttack] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def check_config(cfg: DictConfig) -> None:
    """Plain-value checks of ``adaptive``, ``adaptive_attacks`` and ``transfer_from``.

    Raises:
        ConfigError: A bad value, named with what is expected.
    """
    if not isinstance(cfg.adaptive, bool):
        raise ConfigError(f"adaptive={cfg.adaptive} is invalid; choose true or false")
    node = cfg.adaptive_attacks
    if node.steps is not None and (isinstance(node.steps, bool) or not isinstance(node.steps, int) or node.steps < 1):
        raise ConfigError(f"adaptive_attacks.steps={node.steps} must be an integer >= 1 (or null for pgd.steps)")
    if isinstance(node.restarts, bool) or not isinstance(node.restarts, int) or node.restarts < 1:
        raise ConfigError(f"adaptive_attacks.restarts={node.restarts} must be an integer >= 1")
    kappas = node.kappas
    if not isinstance(kappas, ListConfig | list) or any(
        isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k < 0 for k in kappas
    ):
        raise ConfigError(f"adaptive_attacks.kappas={kappas} must be a list of numbers > 0, e.g. [1, 10]")
    if any(k == 0 for k in kappas):
        raise ConfigError(
            f"adaptive_attacks.kappas={kappas} has 0: the feature-level PGD at kappa 0 is plain PGD (the pgd attack, "
            "already in the worst case, and pgd_ce_restarts); give numbers > 0, e.g. [1, 10]"
        )
    probes = node.probes
    if probes is not None and (
        not isinstance(probes, ListConfig | list) or not probes or not all(isinstance(p, str | int) for p in probes)
    ):
        raise ConfigError(
            f"adaptive_attacks.probes={probes} must be null (the run's MVL) or a non-empty list of probe names, "
            "e.g. [features.1] (lsa-analyze ... list_probes=true lists them)"
        )
    if cfg.transfer_from is not None and str(cfg.transfer_from).strip() == "":
        raise ConfigError("transfer_from='' is empty; give a checkpoint (or run dir) of another lsa-train run")


def build(cfg: DictConfig, run: Any, model: nn.Module, example: torch.Tensor, eps: float) -> AdaptiveSetup:
    """The adaptive attacks ``cfg`` asks for, on ``model`` (already on its device).

    Args:
        cfg: The composed ``evaluate.yaml``.
        run: The :class:`~lsa_train.app.checkpoint_loading.LoadedRun` evaluated.
        model: The evaluated network, in eval mode, on the evaluation device.
        example: One batch of inputs ``(B, ...)`` on that device (probe discovery, source checks).
        eps: The Linf budget of the evaluation.

    Raises:
        ConfigError: Probes the model lacks, or a ``transfer_from`` that does not load or does not fit.
    """
    setup = AdaptiveSetup()
    source, source_path = None, None
    if cfg.transfer_from is not None:
        source, source_path = load_transfer_source(cfg, model, example)
        setup.facts["transfer_from"] = str(source_path)
    elif cfg.adaptive:
        setup.skipped[TRANSFER_ATTACK] = (
            "no transfer_from given (a checkpoint of another run, e.g. the base run of the same seed)"
        )
    probes, weights, measure = None, None, "relative_error"
    if cfg.adaptive:
        names, where = probe_names(cfg, run)
        if names is None:
            setup.skipped[FEATURE_ATTACK] = where
        elif not list(cfg.adaptive_attacks.kappas):
            setup.skipped[FEATURE_ATTACK] = "adaptive_attacks.kappas=[] (no kappa to run)"
        else:
            probes = resolve_probes(model, example, names, run, where)
            measure = feature_measure(run)
            weights, weights_from = feature_weights(cfg, run, [p.name for p in probes])
            setup.facts["feature_probes"] = {"probes": [p.name for p in probes], "from": where, "measure": measure,
                                             "weights": dict(zip([p.name for p in probes], weights, strict=True)),
                                             "weights_from": weights_from}
    else:
        setup.skipped["adaptive attacks"] = "adaptive=false (the worst case covers the attacks above only)"
    node = cfg.adaptive_attacks
    steps = int(node.steps) if node.steps is not None else int(cfg.pgd.steps)
    attacks = adaptive_attacks(
        eps, steps=steps, alpha=None if cfg.pgd.alpha is None else float(cfg.pgd.alpha),
        restarts=int(node.restarts), base_restarts=int(cfg.pgd.restarts),
        kappas=[float(k) for k in node.kappas], probes=probes, weights=weights, transfer_source=source,
        transfer_name=None if source_path is None else str(source_path), seed=int(cfg.seed), measure=measure,
    )
    setup.attacks = attacks if cfg.adaptive else [a for a in attacks if a.name == TRANSFER_ATTACK]
    return setup


# -- the probes of the feature-level attack -----------------------------------------------------
def probe_names(cfg: DictConfig, run: Any) -> tuple[list[str] | None, str]:
    """``(names, where they come from)``, or ``(None, why there are none)``.

    The override ``adaptive_attacks.probes`` wins; else the MVL in the run's checkpoint, if the run
    trained with the LSA term (some ``regularizer.lambda > 0``).
    """
    override = cfg.adaptive_attacks.probes
    if override is not None:
        return [str(p) for p in override], "adaptive_attacks.probes"
    if run.run_cfg is None or run.ckpt_path is None:
        return None, ("no lsa-train run to read the regularized probes from (model=/data=); give "
                      "adaptive_attacks.probes=[...] to attack representations")
    if not term_was_on(run.run_cfg):
        return None, ("the run trained without the LSA term (regularizer.lambda=0 or regularizer=none), so it "
                      "regularized no probe; give adaptive_attacks.probes=[...] to attack representations anyway")
    from lsa_train.app.checkpoint_loading import command_line_policy, load_checkpoint

    checkpoint, _ = load_checkpoint(Path(run.ckpt_path), command_line_policy(cfg))
    state = checkpoint.get("lsa_train")
    mvl = list(state.get("mvl") or []) if isinstance(state, dict) else None
    epoch = checkpoint.get("epoch")
    if mvl is None:
        return None, f"the checkpoint {run.ckpt_path} stores no MVL; give adaptive_attacks.probes=[...]"
    if not mvl:
        return None, (f"the run's MVL was empty at its checkpoint (epoch {epoch}): the term regularized no probe "
                      "then; give adaptive_attacks.probes=[...] to attack representations anyway")
    return [str(p) for p in mvl], f"the run's MVL at its checkpoint (epoch {epoch})"


def feature_weights(cfg: DictConfig, run: Any, probes: list[str]) -> tuple[list[float], str]:
    """``(one weight per probe, where they come from)`` for the feature term of the attack.

    On the run's MVL (no ``adaptive_attacks.probes``): the run's ``regularizer.lambda``, one number for every
    probe or one per MVL probe in the MVL's order (the forward order, as the training zipped them). On probes
    the command line names: 1 each, since the run's term put no weight on probes outside its MVL.

    Raises:
        ConfigError: The run's lambda list does not have one value per MVL probe, or its values are not
            numbers >= 0 (:func:`lsa_train.app.validation.lambda_values`), or they are all 0.
    """
    from lsa_train.app.validation import lambda_values

    if cfg.adaptive_attacks.probes is not None or run.run_cfg is None:
        return [1.0] * len(probes), ("1 per probe: adaptive_attacks.probes names them, not the run's MVL, so the "
                                     "run's regularizer.lambda does not apply")
    lam = lambda_values(run.run_cfg.regularizer)
    if isinstance(lam, float):
        return [lam] * len(probes), f"the run's regularizer.lambda={lam:g}, for every MVL probe"
    if len(lam) != len(probes):
        raise ConfigError(f"the run's regularizer.lambda={lam} has {len(lam)} values but its MVL has {len(probes)} "
                          f"probes {probes}; the feature-level attack weights each MVL probe by its lambda")
    if not any(v > 0 for v in lam):
        raise ConfigError(f"the run's regularizer.lambda={lam} is 0 for every MVL probe {probes}: its term weighted "
                          "no probe; give adaptive_attacks.probes=[...] to attack representations anyway")
    return list(lam), f"the run's regularizer.lambda={lam}, one per MVL probe in forward order"


def feature_measure(run: Any) -> str:
    """The measure of the feature-level attack: the run's ``regularizer.measure`` (what its term compared),
    else the relative error (a model without a run, or a run without a measure key)."""
    from lsa_train.analysis.measures import canonical_measure_name

    saved = OmegaConf.select(run.run_cfg, "regularizer.measure", default=None) if run.run_cfg is not None else None
    if saved is None:
        return "relative_error"
    try:
        return canonical_measure_name(str(saved))
    except ValueError as err:
        raise ConfigError(f"the run's regularizer.measure={saved} is not a known measure: {err}") from err


def term_was_on(run_cfg: DictConfig) -> bool:
    """Whether the run's config has the LSA term on: some ``regularizer.lambda > 0`` and an MVL mode."""
    reg = run_cfg.get("regularizer")
    if not isinstance(reg, DictConfig):
        return False
    raw = reg.get("lambda", 0.0)
    values = list(raw) if isinstance(raw, ListConfig | list) else [raw]
    mode = str(OmegaConf.select(reg, "mvl.mode", default="auto"))
    return mode != "none" and any(float(v) > 0 for v in values)


def resolve_probes(model: nn.Module, example: torch.Tensor, names: list[str], run: Any, where: str) -> list[Any]:
    """The :class:`~lsa_train.analysis.Probe` objects of ``names`` (probe indices resolve against the run's
    candidate probes, as the module does).

    Raises:
        ConfigError: A name or index the model lacks, with the probes it has.
    """
    from lsa_train.analysis.probes import ProbeSelectionError, list_probes, select_probes

    spec: Any = "activations"
    if run.run_cfg is not None:
        spec = OmegaConf.select(run.run_cfg, "regularizer.mvl.probes", default="activations")
        spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec
    sample = example[:1]
    try:
        if all(name.isdigit() for name in names):
            candidates = select_probes(model, sample, spec)
            if any(int(name) >= len(candidates) for name in names):
                raise ProbeSelectionError(f"probe indices {names} are out of range (0..{len(candidates) - 1})")
            return sorted({candidates[int(name)] for name in names}, key=lambda p: p.index)
        return select_probes(model, sample, names)
    except ProbeSelectionError as err:
        raise ConfigError(
            f"the feature-level attack's probes ({where}: {names}) do not fit the model: {one_line(err)}; "
            f"probes are {list_probes(model, sample)}"
        ) from err


# -- the source of the transfer attack ----------------------------------------------------------
def transfer_checkpoint(value: Any) -> Path:
    """``transfer_from`` as a checkpoint path: a run dir means its ``checkpoints/last.ckpt``."""
    path = Path(str(value)).expanduser()
    if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    return path


def load_transfer_source(cfg: DictConfig, model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, Path]:
    """The network of ``transfer_from`` in eval mode on ``example``'s device, checked against ``model``.

    Raises:
        ConfigError: It does not load (the loader's message, prefixed with ``transfer_from``), or it does
            not take the evaluated inputs or predict as many classes.
    """
    from lsa_train.app.checkpoint_loading import DATA_OVERRIDE_KEYS, command_line_policy, data_overrides, load_run

    path = transfer_checkpoint(cfg.transfer_from)
    overrides = {k: v for k, v in data_overrides(cfg.get("data")).items() if k in DATA_OVERRIDE_KEYS}
    try:
        source_run = load_run(path, None, overrides, command_line_policy(cfg))
    except ConfigError as err:
        raise ConfigError(f"transfer_from={cfg.transfer_from}: {one_line(err)}") from err
    source = source_run.model.to(example.device).eval()
    with torch.no_grad():
        try:
            source_logits = source(example[:2])
        except Exception as err:  # any failure of a foreign network on our inputs
            raise ConfigError(
                f"transfer_from={cfg.transfer_from}: its network ({source_run.model_name}) does not take the evaluated "
                f"inputs of shape {tuple(example.shape[1:])} ({type(err).__name__}: {one_line(err)[:160]})"
            ) from err
        classes = int(model(example[:2]).shape[1])
    if source_logits.ndim != 2 or int(source_logits.shape[1]) != classes:
        raise ConfigError(
            f"transfer_from={cfg.transfer_from}: its network predicts {tuple(source_logits.shape[1:])} outputs, the "
            f"evaluated one {classes} classes; give a run on the same data"
        )
    return source, path
