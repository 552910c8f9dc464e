"""The figures ``lsa-analyze`` draws besides the curves: per-probe CM distribution and feature maps.

Both look at the adversarial perturbation (``pgd`` if analysed, else ``fgsm``, else the last one
listed), since the MVL rule and adversarial training are about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lsa_train.app.errors import ConfigError, one_line

#: The per-probe CM box plot of the adversarial perturbation.
DISTRIBUTION_FILE = "lsa_cm_distribution.png"
#: Folder of the feature-map grids, one ``<NN>_<probe>.png`` per probe.
FEATURE_MAP_DIR = "feature_maps"


def adversarial_perturbation(names: Sequence[str]) -> str:
    """``pgd`` if among ``names``, else ``fgsm``, else the last name."""
    for preferred in ("pgd", "fgsm"):
        if preferred in names:
            return preferred
    return list(names)[-1]


def check_feature_map_config(cfg: DictConfig) -> None:
    """Plain-value checks of the ``feature_map*`` keys.

    Raises:
        ConfigError: A bad value, named with what is valid.
    """
    if str(cfg.feature_maps).lower() not in ("true", "false"):
        raise ConfigError(f"feature_maps={cfg.feature_maps} is invalid; choose true or false")
    for key in ("feature_map_samples", "feature_map_channels"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value} must be an integer >= 1")
    probes = cfg.feature_map_probes
    if probes is not None and (
        not OmegaConf.is_list(probes) or not probes or not all(isinstance(p, str) for p in probes)
    ):
        raise ConfigError(f"feature_map_probes={probes} is invalid; give a list of probe names (e.g. "
                          "feature_map_probes=[features.relu2]) or null for the MVL")


def named_feature_map_probes(cfg: DictConfig, model: torch.nn.Module, example: torch.Tensor) -> list[Any] | None:
    """The probes of ``feature_map_probes``, checked against the model before the analysis runs.

    Returns:
        Selected probes, or ``None`` when the MVL is to be shown (or feature maps are off).

    Raises:
        ConfigError: A name that matches no module of the model.
    """
    if not cfg.feature_maps or cfg.feature_map_probes is None:
        return None
    from lsa_train.analysis.probes import select_probes

    names = [str(p) for p in cfg.feature_map_probes]
    try:
        return select_probes(model, example, names)
    except ValueError as err:
        raise ConfigError(f"feature_map_probes={names}: {one_line(err)}") from err


def write_feature_maps(
    cfg: DictConfig,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    results: Mapping[str, Any],
    probes: list[Any] | None,
    out_dir: Path,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Perturbs the first ``feature_map_samples`` samples anew with the adversarial perturbation (its
    eps, ``cfg.seed``) and writes one grid per probe (``probes``, else that perturbation's MVL); labels and
    predictions in the titles are ``class_names`` (the data's, e.g. the image folder's class folders)."""
    from lsa_train.analysis import plot_feature_maps
    from lsa_train.perturbations import perturb

    name = adversarial_perturbation(list(results))
    result = results[name]
    count = int(cfg.feature_map_samples)
    clean, labels = x[:count], y[:count]
    generator = torch.Generator(device=clean.device).manual_seed(int(cfg.seed))
    perturbed = perturb(name, clean, float(result.metadata.get("eps", 0.0)), model=model, labels=labels,
                        generator=generator)
    return plot_feature_maps(
        model, clean, perturbed, out_dir / FEATURE_MAP_DIR, probes=probes if probes is not None else result,
        labels=labels, num_samples=count, num_channels=int(cfg.feature_map_channels), perturbation=name,
        class_names=None if class_names is None else list(class_names),
    )


def write_distribution(results: Mapping[str, Any], out_dir: Path, *, log_scale: bool = False) -> Path:
    """The per-probe CM box plot of the adversarial perturbation."""
    from lsa_train.analysis import plot_cm_distribution

    name = adversarial_perturbation(list(results))
    result = results[name]
    title = f"Per-probe CM over {result.num_samples} samples ({name}, eps={result.metadata.get('eps')})"
    return plot_cm_distribution(result, out_dir / DISTRIBUTION_FILE, title=title, log_scale=log_scale)


def figures_markdown(out_dir: Path, distribution: Path | None, feature_maps: Sequence[Path]) -> list[str]:
    """``analysis.md`` lines that show the distribution and the feature maps (paths relative to ``out_dir``)."""
    lines: list[str] = []
    if distribution is not None:
        lines += ["## Per-probe CM distribution", "", f"![CM distribution]({distribution.relative_to(out_dir)})", ""]
    if feature_maps:
        lines += ["## Feature maps (clean, perturbed, |difference|)", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in feature_maps]
        lines.append("")
    return lines
