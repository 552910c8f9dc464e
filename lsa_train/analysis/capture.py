"""Recording probe outputs with forward hooks, scoped by a context manager.

Example:
    >>> probes = select_probes(model, x[:1])
    >>> with ProbeCapture(model, probes) as capture:
    ...     model(x)
    ...     features = capture.pop()        # {probe name: tensor (N, ...)}
    ...     with capture.paused():          # e.g. while an attack runs
    ...         model(x_adv)                # nothing recorded
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lsa_train.analysis.probes import Probe


class CaptureComplete(Exception):
    """Raised from a hook to end a forward early once every probe has been recorded."""


class ProbeCapture:
    """Context manager that stores the outputs of the given probes on each forward.

    Hooks are registered on ``__enter__`` and removed on ``__exit__``, also when the
    body raises. Call counters for reused modules restart at every forward of ``model``.

    Args:
        model: The root module whose forward is observed.
        probes: Probes from :func:`~lsa_train.analysis.probes.select_probes`.
        detach: ``True`` (analysis) stores detached copies; ``False`` (training
            regularizer) keeps the autograd graph so a loss on the outputs reaches the
            parameters below each probe.
        reduce: Optional ``f(probe_name, output) -> tensor`` applied inside the hook, at
            the moment the module returns; its result is stored instead of a copy of the
            output. Analysis uses it to turn big feature maps into per-sample measures at
            once. The attribute may be swapped between forwards.

    Without ``reduce`` the stored tensor is a copy (``clone``), so an inplace activation
    or a later inplace op in the network cannot overwrite what was recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        probes: Sequence[Probe],
        *,
        detach: bool = True,
        reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not probes:
            raise ValueError("ProbeCapture needs at least one probe")
        self.model = model
        self.probes = list(probes)
        self.detach = detach
        self.reduce = reduce
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._pause_depth = 0
        self._stop_when_complete = False
        self._call_counts: dict[str, int] = {}
        modules = dict(model.named_modules())
        self._wanted: dict[str, dict[int, str]] = {}
        for probe in self.probes:
            if probe.module_name not in modules:
                raise ValueError(f"probe {probe.name!r} names module {probe.module_name!r}, which the model lacks")
            self._wanted.setdefault(probe.module_name, {})[probe.call] = probe.name
        self._modules = {name: modules[name] for name in self._wanted}

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> ProbeCapture:
        if self._handles:
            raise RuntimeError("ProbeCapture is already active; it is not re-entrant")
        self._handles.append(self.model.register_forward_pre_hook(self._reset_counts))
        for module_name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(module_name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs.clear()

    @property
    def active(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Records nothing inside this block (nestable); used around attacks."""
        self._pause_depth += 1
        try:
            yield
        finally:
            self._pause_depth -= 1

    @property
    def is_paused(self) -> bool:
        return self._pause_depth > 0

    # -- results --------------------------------------------------------------------------
    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """Outputs recorded since the last :meth:`pop`, in probe order."""
        return {p.name: self._outputs[p.name] for p in self.probes if p.name in self._outputs}

    def pop(self) -> dict[str, torch.Tensor]:
        """Returns the recorded outputs and forgets them.

        Raises:
            RuntimeError: A probe recorded nothing (the forward did not reach it).
        """
        missing = [p.name for p in self.probes if p.name not in self._outputs]
        if missing:
            raise RuntimeError(f"probes recorded nothing in the last forward: {missing}")
        result = self.outputs
        self._outputs.clear()
        return result

    def forward_until_captured(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs ``model(*inputs)`` only as far as the last probe, and returns :meth:`pop`.

        The forward is cut short once every probe has recorded (the layers after the deepest
        probe never run), which saves their compute and memory when only the
        representations are needed, e.g. the clean branch of the LSA regularizer.
        """
        self._stop_when_complete = True
        try:
            self.model(*inputs)
        except CaptureComplete:
            pass
        finally:
            self._stop_when_complete = False
        return self.pop()

    # -- hooks ----------------------------------------------------------------------------
    def _reset_counts(self, _module: nn.Module, _inputs: object) -> None:
        self._call_counts.clear()

    def _make_hook(self, module_name: str):
        wanted = self._wanted[module_name]

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            call = self._call_counts.get(module_name, 0) + 1
            self._call_counts[module_name] = call
            if self._pause_depth or call not in wanted:
                return
            tensor = output[0] if isinstance(output, tuple | list) else output
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"probe {wanted[call]!r} produced {type(output).__name__}, not a tensor")
            if self.detach:
                tensor = tensor.detach()
            name = wanted[call]
            self._outputs[name] = self.reduce(name, tensor) if self.reduce is not None else tensor.clone()
            if self._stop_when_complete and len(self._outputs) == len(self.probes):
                raise CaptureComplete

        return hook
