"""Model registry in the style of timm: ``@register_model`` entry points and :func:`create_model`.

Every registered entry point is a function ``name(*, num_classes, in_channels=3, input_size=32, **kwargs)``
returning a plain :class:`torch.nn.Module` that maps inputs in ``[0, 1]`` to logits ``(N, num_classes)``.
Names prefixed ``tv:`` build torchvision classification models (see
:mod:`lsa_train.models.torchvision_models`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

from lsa_train.models.inputs import InputSize, image_size, input_shape, is_vector_input
from lsa_train.models.normalization import Normalize, NormalizedModel

#: Prefix of names that build torchvision models, e.g. ``"tv:resnet50"``.
TV_PREFIX = "tv:"

ModelFn = Callable[..., nn.Module]

_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Registers a model entry point under its function name.

    Args:
        fn: ``fn(*, num_classes, in_channels=3, input_size=32, **kwargs) -> nn.Module``.

    Returns:
        ``fn`` unchanged, so this works as a decorator.

    Raises:
        ValueError: The name is already registered or starts with ``tv:``.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    if name.startswith(TV_PREFIX):
        raise ValueError(f"model names must not start with {TV_PREFIX!r}: {name!r}")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by an fnmatch pattern.

    Args:
        pattern: fnmatch glob such as ``"resnet*"``. A pattern starting with ``tv:`` lists the
            torchvision classification models instead (``"tv:*"``, ``"tv:resnet*"``).

    Returns:
        Model names accepted by :func:`create_model`.
    """
    if pattern is not None and pattern.startswith(TV_PREFIX):
        from lsa_train.models.torchvision_models import torchvision_model_names

        names = [TV_PREFIX + name for name in torchvision_model_names()]
    else:
        names = sorted(_MODELS)
    if pattern is None:
        return names
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: InputSize = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Builds a registered model (or ``tv:<torchvision name>``), with normalization inside.

    Args:
        name: A name from :func:`list_models`, or ``"tv:<name>"`` for a torchvision
            classification model (random, or pretrained with ``weights=DEFAULT``: see
            :mod:`lsa_train.models.torchvision_models`).
        num_classes: Number of output logits.
        in_channels: Image channels ``C``; for vector inputs with ``input_size=None`` the
            feature count ``D``.
        input_size: Spatial size of the images: an int ``S`` (``S x S``) or ``(H, W)``; ``None`` or a
            1-tuple ``(D,)`` means vector inputs ``(N, D)`` (only ``mlp_a`` accepts those).
        mean: Per-channel (images) or per-feature (vectors) mean of the inputs in ``[0, 1]`` units.
        std: Matching standard deviations (all > 0). Give both ``mean`` and ``std`` or neither.
            For ``tv:`` models with ``weights``, neither means the weights' own preprocessing statistics.
        **kwargs: Passed to the model's entry point (e.g. ``padding`` for ``cnn_b``,
            ``drop_rate`` for the wide ResNets, builder arguments for ``tv:`` models).

    Returns:
        ``NormalizedModel(normalize, net)`` when ``mean``/``std`` are given (forward:
        ``net(normalize(x))``), else the bare network. Inputs are in ``[0, 1]``; outputs are logits
        ``(N, num_classes)``.

    Raises:
        ValueError: Unknown name, bad class/channel counts, or inconsistent ``mean``/``std``.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or int(in_channels) != in_channels or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither (mean={mean!r}, std={std!r})")
    if name.startswith(TV_PREFIX):
        from lsa_train.models.torchvision_models import create_torchvision_model

        image_size(input_size)  # torchvision models take images
        if mean is None and kwargs.get("weights") not in (None, False):
            from lsa_train.models.torchvision_models import pretrained_statistics

            stats = pretrained_statistics(name[len(TV_PREFIX) :], kwargs["weights"])
            if stats is not None:
                mean, std = _per_channel(stats[0], in_channels), _per_channel(stats[1], in_channels)
        net = create_torchvision_model(
            name[len(TV_PREFIX) :], num_classes=int(num_classes), in_channels=int(in_channels), **kwargs
        )
    elif name in _MODELS:
        net = _MODELS[name](num_classes=int(num_classes), in_channels=int(in_channels), input_size=input_size, **kwargs)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()} or '{TV_PREFIX}<torchvision name>'")
    if mean is None or std is None:
        return net
    vector = is_vector_input(input_size)
    expected = input_shape(in_channels, input_size)[0]
    if len(mean) != expected:
        kind = "features" if vector else "channels"
        raise ValueError(f"mean/std have {len(mean)} entries but the input has {expected} {kind}")
    return NormalizedModel(Normalize(mean, std, vector=vector), net)


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    """RGB statistics for ``channels`` inputs: as they are for 3, their mean repeated otherwise."""
    values = [float(v) for v in values]
    return values if len(values) == channels else [sum(values) / len(values)] * int(channels)
