"""torchvision classification models by name (``create_model("tv:<name>", ...)``), never with weights.

``in_channels != 3`` is handled by replacing the model's first ``nn.Conv2d`` that takes 3 input
channels (the first one in module registration order, which is the stem conv of every
torchvision classification model) with a freshly initialized ``nn.Conv2d`` of identical
hyper-parameters (out channels, kernel, stride, padding, dilation, groups, bias, padding mode)
but ``in_channels`` inputs. Since no pretrained weights are ever loaded there is nothing to
transfer: the new conv gets PyTorch's default initialization like the rest of the model.

``googlenet`` and ``inception_v3`` are built with ``aux_logits=False`` unless told otherwise,
so that they return plain logits in training mode too (not a namedtuple with auxiliary outputs).
"""

from __future__ import annotations

import torchvision
from torch import nn

#: Builder arguments applied unless the caller passes them: plain logits out of every model.
_DEFAULT_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False},
    "inception_v3": {"aux_logits": False},
}


def torchvision_model_names() -> list[str]:
    """Sorted names of torchvision's classification models (``torchvision.models`` namespace)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_torchvision_model(name: str, *, num_classes: int, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Builds ``torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)``.

    Args:
        name: A torchvision classification model name, e.g. ``"resnet50"``.
        num_classes: Output logits.
        in_channels: Input channels; the stem conv is replaced when it differs from 3.
        **kwargs: Extra builder arguments (e.g. ``image_size=32`` for ``vit_b_16``).

    Returns:
        The randomly initialized model; inputs ``(N, in_channels, H, W)``, logits
        ``(N, num_classes)``. These are ImageNet architectures: some need a minimum input size.

    Raises:
        ValueError: Unknown name, a ``weights`` argument, or no 3-channel stem conv to adapt.
    """
    names = torchvision_model_names()
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}; choose one of {names}")
    for key in ("weights", "weights_backbone", "pretrained"):
        if kwargs.get(key) not in (None, False):
            raise ValueError(f"tv:{name}: pretrained weights are not supported (no downloads); drop {key!r}")
        kwargs.pop(key, None)
    kwargs = {**_DEFAULT_KWARGS.get(name, {}), **kwargs}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        adapt_first_conv(model, in_channels, model_name=f"tv:{name}")
    return model


def adapt_first_conv(model: nn.Module, in_channels: int, *, model_name: str = "model") -> str:
    """Replaces the first 3-input-channel ``nn.Conv2d`` of ``model`` by one with ``in_channels`` inputs.

    Args:
        model: The network, modified in place.
        in_channels: New number of input channels.
        model_name: Used in the error message.

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
            parent_name, _, attr = qualified.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, new)
            return qualified
    raise ValueError(f"{model_name}: found no 3-channel nn.Conv2d to adapt to in_channels={in_channels}")
