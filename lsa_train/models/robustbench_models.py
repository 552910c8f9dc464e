"""RobustBench model zoo (``pip install robustbench``): ``model=robustbench model.name=<id>`` in the app.

Goes through RobustBench's own ``load_model`` and model directory layout
(``<model_dir>/<dataset>/<threat_model>/<name>.pt``): a file already there is used as it is, a missing
one is downloaded by RobustBench. RobustBench models take inputs in ``[0, 1]`` and carry their own
normalization, so nothing is added. The files are read by ``torch.load`` with torch's default
``weights_only=True`` (torch >= 2.6); a process that forces the unsafe default is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from torch import nn


def robustbench_available() -> bool:
    """Whether the optional ``robustbench`` package is installed."""
    return importlib.util.find_spec("robustbench") is not None


def _import_robustbench_utils():
    if not robustbench_available():
        raise ValueError("RobustBench models need the 'robustbench' package, which is not installed; "
                         "pip install robustbench (or lsa_train[robustbench])")
    # robustbench 1.1.1 imports `autoattack`, the module name of AutoAttack's GitHub package; the same code
    # is published on PyPI as `pyautoattack`. Alias it when only the PyPI package is installed.
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        sys.modules.setdefault("autoattack", importlib.import_module("pyautoattack"))
        sys.modules.setdefault("autoattack.state", importlib.import_module("pyautoattack.state"))
    return importlib.import_module("robustbench.utils")


def load_robustbench_model(
    name: str, *, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str | Path = "./models"
) -> nn.Module:
    """A RobustBench leaderboard model, in eval mode.

    Args:
        name: The RobustBench id, e.g. ``"Wong2020Fast"`` or ``"Sehwag2021Proxy_R18"``.
        dataset: ``cifar10``, ``cifar100`` or ``imagenet``.
        threat_model: ``Linf``, ``L2`` or ``corruptions``.
        model_dir: RobustBench's model directory (its default is ``./models``).

    Returns:
        The network; inputs ``(N, 3, H, W)`` in ``[0, 1]``, logits ``(N, classes of the dataset)``.

    Raises:
        ValueError: Package missing, unknown dataset, threat model or id (with the valid choices).
    """
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0") not in ("", "0"):
        raise ValueError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: RobustBench would unpickle model files "
                         "with weights_only=False; unset it")
    utils = _import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    datasets = {d.value: d for d in BenchmarkDataset}
    if dataset not in datasets:
        raise ValueError(f"model.dataset={dataset!r} is not a RobustBench dataset; choose one of {list(datasets)}")
    threats = {t.value: t for t in ThreatModel}
    if threat_model not in threats:
        raise ValueError(f"model.threat_model={threat_model!r} is invalid; choose one of {list(threats)}")
    zoo = model_dicts[datasets[dataset]].get(threats[threat_model], {})
    if name not in zoo:
        raise ValueError(f"model.name={name!r} is not in RobustBench's {dataset}/{threat_model} zoo; "
                         f"e.g. {sorted(zoo)[:6]} ({len(zoo)} in all)")
    return utils.load_model(name, model_dir=str(Path(model_dir).expanduser()), dataset=dataset,
                            threat_model=threat_model).eval()
