"""Probe selection: which module outputs the analysis compares.

A *probe* is one call of one module during a forward pass. A module that runs once per
forward gives one probe named after the module (``features.1``); a module that runs
several times (a reused ``nn.ReLU``, as in torchvision's ResNet ``BasicBlock``) gives one
probe per call, named ``layer1.0.relu:1``, ``layer1.0.relu:2`` (1-based call index).

Probes are listed in forward order, found by one dry forward pass under ``torch.no_grad``.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lsa_train.utils.modes import eval_mode

#: Module classes probed by default: the activation functions.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)

#: Module classes probed by ``"learnable"``: the conv/linear layers of the paper's plots.
LEARNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.LazyLinear,
)

#: Named probe sets accepted by :func:`select_probes`.
PROBE_SETS = ("activations", "learnable")

ProbeSpec = str | Sequence[str] | Sequence[nn.Module] | None


class ProbeSelectionError(ValueError):
    """Raised when a probe specification matches nothing or names something unknown."""


@dataclass(frozen=True)
class Probe:
    """One probe point: the ``call``-th call (1-based) of the module ``module_name``.

    Attributes:
        name: Display name, ``module_name`` or ``module_name:call`` for reused modules.
        module_name: Qualified name from ``model.named_modules()`` (``""`` is the root).
        call: 1-based call index of the module within one forward pass.
        index: Position of this probe in forward order among the selected probes.
    """

    name: str
    module_name: str
    call: int
    index: int


def _forward_calls(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, int]]:
    """Runs one forward and returns ``(module_name, call)`` for every module call, in order."""
    names = {module: name for name, module in model.named_modules()}
    counts: dict[str, int] = {}
    calls: list[tuple[str, int]] = []

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        name = names.get(module)
        if name is None:
            return
        counts[name] = counts.get(name, 0) + 1
        calls.append((name, counts[name]))

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        handle.remove()
    return calls


def _split_call(pattern: str) -> tuple[str, int | None]:
    """``"layer1.0.relu:2"`` -> ``("layer1.0.relu", 2)``; no suffix -> ``(pattern, None)``."""
    match = re.fullmatch(r"(.*):(\d+)", pattern)
    if match and not pattern.startswith("re:"):
        return match.group(1), int(match.group(2))
    return pattern, None


def _pattern_matches(pattern: str, module_name: str) -> bool:
    """``re:<regex>`` is a full-match regex; anything else is an fnmatch glob."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], module_name) is not None
    return fnmatch.fnmatchcase(module_name, pattern)


def _validate_spec(model: nn.Module, spec: ProbeSpec) -> set[int]:
    """Checks the spec up front and returns the ids of explicitly given modules."""
    if spec is None or (isinstance(spec, str) and spec in PROBE_SETS):
        return set()
    if isinstance(spec, str):
        raise ProbeSelectionError(
            f"unknown probe set {spec!r}; choose one of {list(PROBE_SETS)}, "
            "or pass a list of module-name patterns (fnmatch, or 're:<regex>') or modules"
        )
    items = list(spec)
    if not items:
        raise ProbeSelectionError("empty probe list; pass 'activations', 'learnable', patterns or modules")
    if all(isinstance(item, nn.Module) for item in items):
        owned = {id(m) for m in model.modules()}
        for item in items:
            if id(item) not in owned:
                raise ProbeSelectionError(f"probe module {type(item).__name__} is not part of the model")
        return {id(item) for item in items}
    for pattern in items:
        if not isinstance(pattern, str):
            raise ProbeSelectionError(f"probe entry {pattern!r} is neither a name pattern nor an nn.Module")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise ProbeSelectionError(f"bad probe regex {pattern!r}: {err}") from None
    names = [name for name, _ in model.named_modules()]
    for pattern in items:
        if not any(_pattern_matches(pattern, name) for name in names):
            raise ProbeSelectionError(
                f"probe pattern {pattern!r} matches no module; modules are: {_short_list(names[1:])}"
            )
    return set()


def _short_list(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def select_probes(
    model: nn.Module,
    example_input: torch.Tensor,
    probes: ProbeSpec = "activations",
) -> list[Probe]:
    """Selects probes in forward order.

    Args:
        model: The network; it is put back in its original train/eval mode.
        example_input: A batch the model accepts, e.g. shape ``(N, C, H, W)``; one
            sample is enough. Used for one dry forward under ``no_grad`` in eval mode.
        probes: ``"activations"`` (default: ReLU, ELU, LeakyReLU, GELU, SiLU, ...),
            ``"learnable"`` (Conv/Linear outputs; also what ``"activations"`` falls back to, with a
            warning, for a model whose activations are functional calls), a list of module-name patterns
            (fnmatch globs such as ``"layer*.relu"``, or ``"re:<regex>"``), or a list
            of modules of ``model``. Names may also carry a call suffix (``"relu:2"``).

    Returns:
        The probes, in the order their outputs are produced.

    Raises:
        ProbeSelectionError: Unknown probe set, bad pattern, or nothing matched.
    """
    patterns: list[tuple[str, int | None]] = []
    spec = probes
    if isinstance(spec, Sequence) and not isinstance(spec, str) and spec and isinstance(spec[0], str):
        patterns = [_split_call(str(item)) for item in spec]
        spec = [base for base, _ in patterns]
    module_set = _validate_spec(model, spec)
    modules = dict(model.named_modules())
    calls = _forward_calls(model, example_input)
    multi = {name for name, call in calls if call > 1}
    selected: list[Probe] = []
    for module_name, call in calls:
        module = modules[module_name]
        if module_set:
            keep = id(module) in module_set
        elif patterns:
            keep = any(
                _pattern_matches(base, module_name) and (wanted is None or wanted == call)
                for base, wanted in patterns
            )
        else:
            kinds = LEARNABLE_TYPES if spec == "learnable" else ACTIVATION_TYPES
            keep = isinstance(module, kinds)
        if keep:
            name = f"{module_name}:{call}" if module_name in multi else module_name
            selected.append(Probe(name=name, module_name=module_name, call=call, index=len(selected)))
    if not selected and spec in (None, "activations") and not patterns:
        # activations applied as functions (F.relu in forward) leave no activation module to hook
        fallback = select_probes(model, example_input, "learnable")
        warnings.warn(
            f"{type(model).__name__} has no activation modules (functional activations?): probing the "
            f"{len(fallback)} conv/linear outputs instead (probes='learnable'); pass module-name patterns to choose",
            stacklevel=2,
        )
        return fallback
    if not selected:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ProbeSelectionError(
            f"no probe matched {probes!r} in {type(model).__name__}; module types present: {kinds}"
        )
    return selected


def list_probes(model: nn.Module, example_input: torch.Tensor, probes: ProbeSpec = "activations") -> list[str]:
    """Names of the probes :func:`select_probes` would capture, in forward order."""
    return [probe.name for probe in select_probes(model, example_input, probes)]
