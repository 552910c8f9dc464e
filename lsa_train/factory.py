"""From config nodes (or plain dicts) to a network and a data module, with or without Hydra.

One path for built-in and user classes alike: each node has a ``_target_`` (a dotted path or a callable)
and is built with ``hydra.utils.instantiate``. Model keys that are ``???`` (or absent) among
``num_classes``, ``in_channels``, ``input_size``, ``mean``, ``std`` are filled from the data when the
target accepts them. A user class that takes no ``mean``/``std`` gets its inputs as they are, unless
the node gives ``mean``/``std``: then a :class:`~lsa_train.models.Normalize` layer goes in front.
Pretrained models (``weights``, ``pretrained`` or ``weights_file`` set) keep their own statistics.

Example (a notebook, no Hydra)::

    from lsa_train.factory import build_model_and_data

    model, data = build_model_and_data(
        model={"_target_": "my_pkg.nets.SmallCNN", "width": 32, "checkpoint": "weights.pt"},
        data={"_target_": "lsa_train.data.ImageFolderDataModule", "root": "images/"},
    )
"""

from __future__ import annotations

import importlib
import inspect
import logging
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

log = logging.getLogger(__name__)

#: Model keys filled from the data when ``???`` (or absent) and accepted by the target.
DATA_MODEL_KEYS: tuple[str, ...] = ("num_classes", "in_channels", "input_size", "mean", "std")
#: Model keys read here, never passed to the target: a weights file and how strictly it must fit.
MODEL_LOAD_KEYS: tuple[str, ...] = ("checkpoint", "strict")
#: Keys whose non-empty value marks a model as pretrained (it brings its own input statistics).
PRETRAINED_KEYS: tuple[str, ...] = ("weights", "pretrained", "weights_file")
MISSING = "???"


def _as_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        values = OmegaConf.to_container(node, resolve=True, throw_on_missing=False, enum_to_str=True)
    elif isinstance(node, Mapping):
        values = dict(node)
    else:
        raise ValueError(f"expected a config node with a _target_, got {type(node).__name__}")
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items()}


def locate(path: str) -> Any:
    """The object a dotted path names: the longest importable module prefix, then attributes.

    Raises:
        ImportError: No prefix is a module, or the module itself fails to import.
        AttributeError: The module lacks the named attribute.
    """
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and not module_name.startswith(err.name):
                raise  # the module exists but imports a missing package
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"no module named {parts[0]!r}")


def resolve_target(target: Any, what: str = "model") -> Callable[..., Any]:
    """The callable a ``_target_`` names (a dotted path, found on ``sys.path``, or a callable).

    Raises:
        ValueError: Missing, unimportable or not callable, with the reason.
    """
    if callable(target):
        return target
    if target in (None, "", MISSING):
        raise ValueError(f"{what}._target_ is not set; give the dotted path of a class or function, "
                         f"e.g. {what}._target_=my_package.module.MyClass")
    try:
        found = locate(str(target))
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what}._target_={target} cannot be imported ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]}); is its module on PYTHONPATH?") from err
    if not callable(found):
        raise ValueError(f"{what}._target_={target} is not a class or function")
    return found


def accepted_keys(target: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword names ``target`` takes, and whether it also takes ``**kwargs``."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return set(), True
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def data_class_names(datamodule: Any) -> list[str] | None:
    """The data's class names (``class_names[k]`` for label ``k``), or ``None`` when it names none."""
    names = getattr(datamodule, "class_names", None)
    return None if names is None else [str(n) for n in names]


def data_facts(datamodule: Any) -> dict[str, Any]:
    """``num_classes``, ``in_channels``, ``input_size``, ``mean``, ``std`` of a data module.

    Uses its ``model_kwargs()`` when it has one (the built-in data modules); otherwise a user
    ``LightningDataModule`` needs a ``num_classes`` attribute, and the input shape is read from the
    first training batch (``setup("fit")``). ``mean``/``std`` are then ``None``.

    Raises:
        ValueError: No ``num_classes``, or the first batch is not ``(inputs, labels)``.
    """
    if hasattr(datamodule, "model_kwargs"):
        return dict(datamodule.model_kwargs())
    name = type(datamodule).__name__
    num_classes = getattr(datamodule, "num_classes", None)
    if num_classes is None:
        raise ValueError(f"data module {name} has no num_classes attribute (an int >= 1); add one, "
                         "or set model.num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"data module {name} has num_classes={num_classes!r} ({type(num_classes).__name__}); "
                         "expected an integer >= 1")
    num_classes = datamodule.num_classes = int(num_classes)  # a numpy integer becomes a plain int
    shape = getattr(datamodule, "input_shape", None)
    if shape is None:
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            kind = type(batch).__name__
            raise ValueError(f"data module {name}: a training batch must be (inputs, labels), got a {kind}")
        shape = tuple(batch[0].shape[1:])
        datamodule.input_shape = shape
    shape = tuple(int(s) for s in shape)
    vector = len(shape) == 1
    return {"num_classes": num_classes, "in_channels": shape[0], "input_size": None if vector else shape[1:],
            "mean": None, "std": None}


def build_data(data: Any) -> Any:
    """A data module from a node with ``_target_`` (or the data module itself)."""
    if not isinstance(data, Mapping | DictConfig):
        return data
    node = _as_dict(data)
    resolve_target(node.get("_target_"), "data")
    return hydra.utils.instantiate(node, _convert_="all")


def _is_pretrained(node: Mapping[str, Any]) -> bool:
    return any(node.get(key) not in (None, False, "", MISSING) for key in PRETRAINED_KEYS)


def model_arguments(model: Any, facts: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a model node into the target's arguments (data keys filled) and what is applied after.

    Returns:
        ``(arguments, extras)``: ``arguments`` has ``_target_`` and every accepted key;
        ``extras`` has ``mean``/``std`` to put in front of a target that does not take them, and the
        :data:`MODEL_LOAD_KEYS`.
    """
    node = _as_dict(model)
    target = resolve_target(node.get("_target_"), "model")
    names, open_kwargs = accepted_keys(target)
    extras = {key: node.pop(key) for key in MODEL_LOAD_KEYS if key in node}
    pretrained = _is_pretrained(node)
    for key in DATA_MODEL_KEYS:
        marked = key in node
        value = node.pop(key, MISSING)
        if value == MISSING:  # fill from the data when the target names the key (or the node marks it ???)
            if (key in names or (marked and open_kwargs)) and not (key in ("mean", "std") and pretrained):
                node[key] = facts.get(key)
        elif key in names or open_kwargs:
            node[key] = value
        elif key in ("mean", "std"):
            extras[key] = value  # applied as a Normalize layer in front of the network
        else:
            node[key] = value  # an explicit value the target does not take: let it say so
    return node, extras


def build_model(
    model: Any, datamodule: Any = None, *, facts: Mapping[str, Any] | None = None, trust_checkpoint: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a model node, fitted to the data, with its ``checkpoint`` loaded.

    Args:
        model: A node with ``_target_`` (dict or DictConfig), or an ``nn.Module`` (returned as is).
        datamodule: Where ``???`` data keys come from (see :func:`data_facts`).
        facts: The data facts, if already known (instead of ``datamodule``).
        trust_checkpoint: Allow full unpickling of ``checkpoint`` (see
            :func:`~lsa_train.models.weights.read_weights_file`).

    Returns:
        The model (inputs in ``[0, 1]``) and the arguments it was built with (for reports).

    Raises:
        ValueError: Bad target or arguments, or a weights file that does not fit.
    """
    if isinstance(model, nn.Module):
        return model, {}
    if facts is None:
        facts = data_facts(datamodule) if datamodule is not None else {}
    arguments, extras = model_arguments(model, facts)
    net = hydra.utils.instantiate(arguments, _convert_="all")
    if not isinstance(net, nn.Module):
        raise ValueError(f"model._target_={arguments['_target_']} returned a {type(net).__name__}, not an nn.Module")
    checkpoint = extras.get("checkpoint")
    if checkpoint not in (None, ""):
        from lsa_train.models.weights import load_weights

        report = load_weights(net, str(checkpoint), strict=bool(extras.get("strict", True)), trust=trust_checkpoint)
        loaded = report.describe()
        log.info("model.checkpoint=%s", loaded)
    if extras.get("mean") is not None or extras.get("std") is not None:
        from lsa_train.models.normalization import Normalize, NormalizedModel

        if extras.get("mean") is None or extras.get("std") is None:
            raise ValueError("give both model.mean and model.std, or neither")
        vector = facts.get("input_size", ()) is None
        net = NormalizedModel(Normalize(extras["mean"], extras["std"], vector=vector), net)
    shown = {k: v for k, v in arguments.items() if k != "_target_"}
    shown.update({k: v for k, v in extras.items() if v is not None and (k != "strict" or checkpoint)})
    if checkpoint not in (None, ""):
        shown["checkpoint_loaded"] = loaded  # reaches the run summary, metrics.json and the evaluation report
    return net, shown


def weights_source(model_kwargs: Mapping[str, Any]) -> str:
    """Where a built model's weights came from, for logs and reports: the loaded ``checkpoint``, pretrained
    ``weights``/``pretrained``/``weights_file``, or none (a randomly initialized network)."""
    if model_kwargs.get("checkpoint_loaded"):
        return str(model_kwargs["checkpoint_loaded"])
    for key in PRETRAINED_KEYS:
        if model_kwargs.get(key) not in (None, False, "", MISSING):
            return f"pretrained weights ({key}={model_kwargs[key]})"
    return "no weights loaded: a randomly initialized network"


def build_model_and_data(model: Any, data: Any, *, trust_checkpoint: bool = False) -> tuple[nn.Module, Any]:
    """:func:`build_data` then :func:`build_model` for that data: the one-call notebook entry."""
    datamodule = build_data(data)
    net, _ = build_model(model, datamodule, trust_checkpoint=trust_checkpoint)
    return net, datamodule
