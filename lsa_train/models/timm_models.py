"""timm models (``pip install timm``): ``model=timm model.name=<timm name>`` in the app.

Pretrained weights come either from timm's own source (``pretrained=True``: its cache or the Hugging
Face hub) or from a local file (``weights_file``), which is read here with ``weights_only=True`` (or
as safetensors) and handed to timm as a state dict, so timm's classifier reset (other ``num_classes``)
and input-conv adaptation (other ``in_channels``) apply as for its own weights. The mean/std of the
pretrained config go into the model as its first layer, so inputs stay in ``[0, 1]``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lsa_train.models.normalization import Normalize, NormalizedModel
from lsa_train.models.weights import extract_state_dict, read_weights_file


def timm_available() -> bool:
    """Whether the optional ``timm`` package is installed."""
    return importlib.util.find_spec("timm") is not None


def _import_timm() -> Any:
    if not timm_available():
        raise ValueError("timm models need the 'timm' package, which is not installed; pip install timm "
                         "(or lsa_train[timm])")
    import timm

    return timm


def _read_state_dict(path: str | Path) -> dict[str, Any]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return extract_state_dict(read_weights_file(path))


def create_timm_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    weights_file: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, ...)`` with the normalization inside.

    Args:
        name: A timm model name (``timm.list_models()``), e.g. ``"resnet18"``.
        num_classes: Output logits (timm replaces a pretrained head of another width).
        in_channels: Input channels (timm adapts a pretrained stem).
        pretrained: Load timm's pretrained weights for ``name`` (from its cache or the hub).
        weights_file: Load pretrained weights from this local file instead (``.pth``/``.pt`` state dict
            or checkpoint, or ``.safetensors``); implies ``pretrained``.
        mean, std: Input statistics in ``[0, 1]`` units; default: the pretrained config's when
            pretrained, else no normalization.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_rate``).

    Returns:
        ``NormalizedModel`` (or the bare network without statistics); inputs ``(N, C, H, W)`` in ``[0, 1]``.

    Raises:
        ValueError: timm missing, unknown name, or an unusable weights file.
    """
    timm = _import_timm()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; e.g. {close or timm.list_models()[:8]} (timm.list_models())")
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither (mean={mean!r}, std={std!r})")
    options: dict[str, Any] = {"num_classes": int(num_classes), "in_chans": int(in_channels), **kwargs}
    if weights_file is not None:
        options["pretrained_cfg_overlay"] = {"state_dict": _read_state_dict(Path(weights_file).expanduser())}
    net = timm.create_model(name, pretrained=bool(pretrained or weights_file is not None), **options)
    if mean is None and (pretrained or weights_file is not None):
        config = getattr(net, "pretrained_cfg", {}) or {}
        mean, std = config.get("mean"), config.get("std")
        if mean is not None and len(mean) != in_channels:  # a grey input of an RGB-trained model
            mean, std = [sum(mean) / len(mean)] * in_channels, [sum(std) / len(std)] * in_channels
    if mean is None or std is None:
        return net
    return NormalizedModel(Normalize(mean, std), net)
