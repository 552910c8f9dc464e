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

#: Autograd node names (without the ``Backward<n>`` suffix) of activation functions: such a node that is
#: not the output of an activation module is an activation applied as a function (``F.relu`` in forward).
FUNCTIONAL_ACTIVATION_NODES = frozenset({
    "Relu", "Gelu", "Silu", "Elu", "Celu", "LeakyRelu", "Hardtanh", "Sigmoid", "Tanh", "Softplus", "Mish",
    "Hardswish", "Hardsigmoid", "Prelu", "PreluKernel", "RreluWithNoise", "LogSigmoid", "Threshold",
})

ProbeSpec = str | Sequence[str] | Sequence[nn.Module] | None


#: Largest probe list spelled out as an example in the coverage note.
_EXAMPLE_NAMES = 6


class ProbeSelectionError(ValueError):
    """Raised when a probe specification matches nothing or names something unknown."""


class ProbeCoverageWarning(UserWarning):
    """The default activation probes miss part of the network (activations applied as functions)."""


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


@dataclass
class _DryRun:
    """What one dry forward saw: every module call in order and, when traced, the autograd graph.

    Attributes:
        calls: ``(module_name, call)`` for every module call, in forward order.
        nodes: For each call whose output is a tensor with a ``grad_fn``, that node (traced runs only).
        outputs: The ``grad_fn`` nodes of the model's output tensors (traced runs only).
    """

    calls: list[tuple[str, int]]
    nodes: dict[tuple[str, int], object]
    outputs: list[object]


def _forward_calls(model: nn.Module, example_input: torch.Tensor, trace: bool = False) -> _DryRun:
    """Runs one forward in eval mode and records every module call, in order.

    With ``trace`` the forward runs with autograd on (the input made to require grad, so that a
    frozen model is traced too) and each call's output node is kept; if that forward fails, it is
    run again untraced.
    """
    names = {module: name for name, module in model.named_modules()}
    counts: dict[str, int] = {}
    run = _DryRun([], {}, [])

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        name = names.get(module)
        if name is None:
            return
        counts[name] = counts.get(name, 0) + 1
        run.calls.append((name, counts[name]))
        node = getattr(output, "grad_fn", None) if isinstance(output, torch.Tensor) else None
        if node is not None:
            run.nodes[(name, counts[name])] = node

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        with eval_mode(model):
            if trace:
                try:
                    with torch.enable_grad():
                        traced = example_input.detach()
                        if traced.is_floating_point():
                            traced = traced.requires_grad_(True).clone()  # a non-leaf: in-place ops stay legal
                        output = model(traced)
                    run.outputs = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
                    return run
                except RuntimeError:
                    counts.clear()
                    run = _DryRun([], {}, [])
            with torch.no_grad():
                model(example_input)
    finally:
        handle.remove()
    return run


def _tensors(value: object) -> list[torch.Tensor]:
    """The tensors in a model output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _node_kind(node: object) -> str:
    """``ReluBackward0`` -> ``Relu``."""
    return re.sub(r"Backward\d*$", "", type(node).__name__)


def _layers_behind(start: object, learnable: dict[object, str], stop: set[object]) -> set[str]:
    """The learnable layers whose outputs reach ``start`` through no other learnable layer (nor a ``stop``
    node): a walk back through the autograd graph from ``start``."""
    found: set[str] = set()
    seen: set[object] = set()
    pending = [next_node for next_node, _ in getattr(start, "next_functions", ())]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in learnable:
            found.add(learnable[node])
            continue
        if node in stop:
            continue
        pending.extend(next_node for next_node, _ in getattr(node, "next_functions", ()))
    return found


def _unprobed_layers(model: nn.Module, run: _DryRun, selected: Sequence[Probe]) -> list[str]:
    """Conv/linear layers that feed an activation applied as a function and no probed activation module.

    The autograd graph of the traced dry forward is walked back from every activation node (ReLU, GELU,
    ...) that is not the output of a probed module, up to the nearest conv/linear outputs.
    """
    modules = dict(model.named_modules())
    multi = {name for name, call in run.calls if call > 1}
    learnable: dict[object, str] = {}
    for (name, call), node in run.nodes.items():
        if isinstance(modules[name], LEARNABLE_TYPES):
            learnable.setdefault(node, f"{name}:{call}" if name in multi else name)
    probed = {run.nodes[(p.module_name, p.call)] for p in selected if (p.module_name, p.call) in run.nodes}
    functional: list[object] = []
    seen: set[object] = set()
    pending = list(run.outputs)
    while pending:  # every node of the graph, from the outputs back
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node not in probed and _node_kind(node) in FUNCTIONAL_ACTIVATION_NODES:
            functional.append(node)
        pending.extend(next_node for next_node, _ in getattr(node, "next_functions", ()))
    behind_functional: set[str] = set()
    for node in functional:
        behind_functional |= _layers_behind(node, learnable, probed)
    covered: set[str] = set()
    for node in probed:
        covered |= _layers_behind(node, learnable, probed)
    order = list(dict.fromkeys(learnable.values()))
    return [name for name in order if name in behind_functional - covered]


def _coverage_note(model: nn.Module, missing: Sequence[str], selected: Sequence[Probe]) -> str:
    """The warning for :func:`select_probes` when activation probes miss ``missing``."""
    modules = list(dict.fromkeys(p.module_name for p in selected))
    names = [*modules, *missing]
    example = f", e.g. probes={names}" if len(names) <= _EXAMPLE_NAMES else ""
    return (
        f"{type(model).__name__}: {len(missing)} conv/linear layer(s) feed activations applied as functions "
        f"(F.relu etc. in forward) and have no activation probe after them, so they are never MVL candidates: "
        f"{_short_list(missing)}; probe them with probes='learnable' (every conv/linear output) or a list of "
        f"module-name patterns that names them besides the activation modules{example}"
    )


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
    """Selects probes in forward order (see :func:`select_probes_and_notes`), warning each note.

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

    Warns:
        ProbeCoverageWarning: The notes of :func:`select_probes_and_notes`: with the default
            ``"activations"``, a model without activation modules (probed at its conv/linear outputs
            instead), or conv/linear layers whose activations are functions and so have no probe.
    """
    selected, notes = select_probes_and_notes(model, example_input, probes)
    for note in notes:
        warnings.warn(note, ProbeCoverageWarning, stacklevel=2)
    return selected


def select_probes_and_notes(
    model: nn.Module,
    example_input: torch.Tensor,
    probes: ProbeSpec = "activations",
) -> tuple[list[Probe], list[str]]:
    """:func:`select_probes` without warnings: the probes, and what a user should know about them.

    The notes (one line each) concern the default ``"activations"`` set, which finds activation
    *modules*: a model whose activations are all functions (``F.relu`` in ``forward``) is probed at its
    conv/linear outputs instead; a model with some activation modules and some functional activations
    is probed at the modules only, and the conv/linear layers that feed a functional activation and no
    probed one (found in the autograd graph of the dry forward) are named, with how to probe them.
    Explicit sets and patterns give no notes.
    """
    patterns: list[tuple[str, int | None]] = []
    spec = probes
    if isinstance(spec, Sequence) and not isinstance(spec, str) and spec and isinstance(spec[0], str):
        patterns = [_split_call(str(item)) for item in spec]
        spec = [base for base, _ in patterns]
    module_set = _validate_spec(model, spec)
    modules = dict(model.named_modules())
    default = spec in (None, "activations") and not patterns
    run = _forward_calls(model, example_input, trace=default)
    calls = run.calls
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
    if not selected and default:
        # activations applied as functions (F.relu in forward) leave no activation module to hook
        fallback, _ = select_probes_and_notes(model, example_input, "learnable")
        return fallback, [
            f"{type(model).__name__} has no activation modules (functional activations?): probing the "
            f"{len(fallback)} conv/linear outputs instead (probes='learnable'); pass module-name patterns to choose"
        ]
    if not selected:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ProbeSelectionError(
            f"no probe matched {probes!r} in {type(model).__name__}; module types present: {kinds}"
        )
    missing = _unprobed_layers(model, run, selected) if default else []
    return selected, [_coverage_note(model, missing, selected)] if missing else []


def list_probes(model: nn.Module, example_input: torch.Tensor, probes: ProbeSpec = "activations") -> list[str]:
    """Names of the probes :func:`select_probes` would capture, in forward order."""
    return [probe.name for probe in select_probes(model, example_input, probes)]
