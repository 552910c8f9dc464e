"""torchvision classification models by name (``create_model("tv:<name>", ...)``), random or pretrained.

``weights`` (``"DEFAULT"`` or an enum member name such as ``"IMAGENET1K_V2"``) builds the model with
torchvision's own builder and loader, so the file comes from torchvision's cache
(``$TORCH_HOME/hub/checkpoints/``) or is downloaded into it; the file is read with
``weights_only=True``. With pretrained weights:

* a ``num_classes`` other than the weights' replaces the classifier head (the last ``nn.Linear`` or
  1x1 ``nn.Conv2d`` with that many outputs) by a new, randomly initialized one;
* ``in_channels != 3`` replaces the stem conv by one whose kernel is built from the pretrained RGB
  kernel (summed over RGB for one channel, else repeated and rescaled by ``3 / in_channels``);
* :func:`pretrained_statistics` gives the mean/std of the weights' preprocessing, which
  :func:`~lsa_train.models.create_model` puts inside the model when no mean/std are given.

The layers that are new (not from the weights) are logged. Without weights, ``in_channels != 3``
replaces the stem conv by a fresh one drawn from a normal distribution with the standard deviation of
the freshly initialized RGB kernel it replaces (torchvision's stem inits are zero-mean normals whose
scale does not depend on the input channels, e.g. Kaiming ``fan_out``).

``googlenet`` and ``inception_v3`` are built with ``aux_logits=False`` unless told otherwise,
so that they return plain logits in training mode too (not a namedtuple with auxiliary outputs).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

#: Builder arguments applied unless the caller passes them: plain logits out of every model.
_DEFAULT_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False},
    "inception_v3": {"aux_logits": False},
}


def torchvision_model_names() -> list[str]:
    """Sorted names of torchvision's classification models (``torchvision.models`` namespace)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_weights(name: str, weights: Any) -> Any:
    """The torchvision weights enum member for ``weights`` (``"DEFAULT"``, a member name, or a member).

    Raises:
        ValueError: The model has no pretrained weights, or ``weights`` names none of them.
    """
    if weights is None or weights is False:
        return None
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as err:
        raise ValueError(f"tv:{name} has no pretrained weights in torchvision; drop weights") from err
    if isinstance(weights, enum):
        return weights
    text = str(weights).split(".")[-1]
    choices = list(enum.__members__)
    if text not in choices:
        raise ValueError(f"weights={weights!r} is not a weights of tv:{name}; choose one of {choices}")
    return enum[text]


def pretrained_statistics(name: str, weights: Any) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` of the preprocessing that goes with ``weights`` of ``tv:<name>`` (``None`` without)."""
    member = resolve_weights(name, weights)
    if member is None:
        return None
    transforms = member.transforms()
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    return (list(mean), list(std)) if mean is not None and std is not None else None


def weights_cache_file(member: Any) -> Path:
    """Where torchvision's loader looks for the file of a weights enum member (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(member.url).path)


@contextmanager
def _safe_hub_loading() -> Iterator[None]:
    """Makes torchvision's weights loader read cached files with ``weights_only=True``."""
    from torchvision.models import _api

    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = functools.partial(original, weights_only=True)
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def create_torchvision_model(
    name: str, *, num_classes: int, in_channels: int = 3, weights: Any = None, progress: bool = True, **kwargs: Any
) -> nn.Module:
    """Builds ``torchvision.models.get_model(name, ...)``, randomly initialized or from ``weights``.

    Args:
        name: A torchvision classification model name, e.g. ``"resnet50"``.
        num_classes: Output logits; a head of another width than the weights' is replaced.
        in_channels: Input channels; the stem conv is replaced when it differs from 3.
        weights: ``None`` (random init), ``"DEFAULT"`` or a weights enum member name.
        progress: Show torchvision's download progress bar (only when the file is not cached).
        **kwargs: Extra builder arguments (e.g. ``image_size=32`` for ``vit_b_16``).

    Returns:
        The model; inputs ``(N, in_channels, H, W)`` (normalized: see :func:`pretrained_statistics`),
        logits ``(N, num_classes)``. These are ImageNet architectures: some need a minimum input size.

    Raises:
        ValueError: Unknown name or weights, a ``pretrained``/``weights_backbone`` argument, or no
            3-channel stem conv / classifier head to adapt.
    """
    names = torchvision_model_names()
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}; choose one of {names}")
    for key in ("weights_backbone", "pretrained"):
        if kwargs.get(key) not in (None, False):
            raise ValueError(f"tv:{name}: {key!r} is not supported; use weights=DEFAULT (or a weights name)")
        kwargs.pop(key, None)
    kwargs = {**_DEFAULT_KWARGS.get(name, {}), **kwargs}
    member = resolve_weights(name, weights)
    if member is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            adapt_first_conv(model, in_channels, model_name=f"tv:{name}")
        return model
    with _safe_hub_loading():
        try:
            model = torchvision.models.get_model(name, weights=member, progress=progress, **kwargs)
        except (URLError, OSError) as err:  # offline, and the file is not in the cache
            raise ValueError(
                f"tv:{name} weights {member}: '{weights_cache_file(member)}' is not in torchvision's cache and could "
                f"not be downloaded ({type(err).__name__}: {' '.join(str(err).split())[:120]}); put the file there "
                "($TORCH_HOME/hub/checkpoints) or run once with network access"
            ) from err
    new_layers = []
    pretrained_classes = len(member.meta.get("categories") or [])
    if pretrained_classes and pretrained_classes != num_classes:
        new_layers.append(replace_head(model, pretrained_classes, num_classes, model_name=f"tv:{name}"))
    if in_channels != 3:
        stem = adapt_first_conv(model, in_channels, model_name=f"tv:{name}", pretrained=True)
        new_layers.append(f"{stem} (built from the RGB kernel)")
    log.info("tv:%s with weights %s; new layers: %s", name, member, ", ".join(new_layers) or "none")
    return model


def replace_head(model: nn.Module, old_classes: int, num_classes: int, *, model_name: str = "model") -> str:
    """Replaces the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``) with ``old_classes`` outputs by a new one
    with ``num_classes`` outputs (PyTorch's default init); returns its qualified name.

    Raises:
        ValueError: No such layer.
    """
    found = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == old_classes:
            found = (qualified, nn.Linear(module.in_features, num_classes, bias=module.bias is not None))
        elif isinstance(module, nn.Conv2d) and module.out_channels == old_classes and module.kernel_size == (1, 1):
            found = (qualified, nn.Conv2d(module.in_channels, num_classes, 1, bias=module.bias is not None))
    if found is None:
        raise ValueError(f"{model_name}: found no classifier layer with {old_classes} outputs to replace")
    qualified, new = found
    parent_name, _, attr = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return qualified


def adapt_first_conv(model: nn.Module, in_channels: int, *, model_name: str = "model", pretrained: bool = False) -> str:
    """Replaces the first 3-input-channel ``nn.Conv2d`` of ``model`` by one with ``in_channels`` inputs.

    Args:
        model: The network, modified in place.
        in_channels: New number of input channels.
        model_name: Used in the error message.
        pretrained: Build the new kernel from the old (trained) one: summed over RGB for one channel,
            else the RGB kernel repeated and scaled by ``3 / in_channels``. Otherwise a fresh normal
            draw with the old kernel's standard deviation (its init scale).

    Returns:
        The qualified name of the replaced conv (e.g. ``"conv1"``, ``"features.0.0"``).

    Raises:
        ValueError: The model has no ``nn.Conv2d`` with 3 input channels.
    """
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                groups=module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            with torch.no_grad():
                old = module.weight
                if pretrained:
                    if in_channels == 1:
                        new.weight.copy_(old.sum(dim=1, keepdim=True))
                    else:
                        repeats = -(-in_channels // 3)
                        new.weight.copy_(old.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels))
                else:
                    new.weight.normal_(0.0, float(old.std()))
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            parent_name, _, attr = qualified.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, new)
            return qualified
    raise ValueError(f"{model_name}: found no 3-channel nn.Conv2d to adapt to in_channels={in_channels}")
