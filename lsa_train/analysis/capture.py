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
from weakref import WeakKeyDictionary

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lsa_train.analysis.probes import Probe


class CaptureComplete(Exception):
    """Raised from a hook to end a forward early once every probe has been recorded."""


#: Per module, the calls whose recorded output no later op of a complete forward modified.
_UNMODIFIED_OUTPUTS: WeakKeyDictionary[nn.Module, set[int]] = WeakKeyDictionary()


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's version counter; ``None`` for inference tensors, which have none."""
    return None if tensor.is_inference() else tensor._version


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

    Without ``reduce`` the stored tensor must survive the rest of the forward: an inplace
    op after the probe (``out += identity`` on a probed BatchNorm output) would overwrite
    it. The first time a probe is recorded its output is copied (``clone``) and watched;
    if no later op of that complete forward changed it (its version counter did not move),
    later captures store the output itself, saving the copy's memory and time. A stored
    output that does change anyway makes :meth:`pop` raise instead of returning wrong values.
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
        # name -> (module, call, output as the network holds it, its version, whether a clone was stored)
        self._watched: dict[str, tuple[nn.Module, int, torch.Tensor, int, bool]] = {}
        self._forward_complete = True
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
        self._watched.clear()

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
        self._check_watched()
        result = self.outputs
        self._outputs.clear()
        return result

    def _check_watched(self) -> None:
        """Learns which outputs need no copy; raises if an uncopied one was modified in place."""
        watched, self._watched = self._watched, {}
        for name, (module, call, tensor, version, cloned) in watched.items():
            modified = tensor._version != version
            if cloned and not modified and self._forward_complete:
                _UNMODIFIED_OUTPUTS.setdefault(module, set()).add(call)
            elif not cloned and modified:
                _UNMODIFIED_OUTPUTS.get(module, set()).discard(call)  # the next capture copies it again
                raise RuntimeError(
                    f"the output of probe {name!r} was modified in place after it was recorded (the forward "
                    "changed since an earlier one); run the forward again, it will be copied from now on"
                )

    def forward_until_captured(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs ``model(*inputs)`` only as far as the last probe, and returns :meth:`pop`.

        The forward is cut short once every probe has recorded (the layers after the deepest
        probe never run), which saves their compute and memory when only the
        representations are needed, e.g. the clean branch of the LSA regularizer.
        """
        self._stop_when_complete = True
        self._forward_complete = False  # later ops never ran: nothing learnt about them
        try:
            self.model(*inputs)
        except CaptureComplete:
            pass
        finally:
            self._stop_when_complete = False
        try:
            return self.pop()
        finally:
            self._forward_complete = True

    # -- hooks ----------------------------------------------------------------------------
    def _reset_counts(self, _module: nn.Module, _inputs: object) -> None:
        self._call_counts.clear()
        self._watched.clear()
        self._forward_complete = not self._stop_when_complete

    def _keep(self, name: str, module: nn.Module, call: int, tensor: torch.Tensor) -> torch.Tensor:
        version = _version(tensor)
        if version is None:
            return tensor.clone()
        safe = call in _UNMODIFIED_OUTPUTS.get(module, ())
        self._watched[name] = (module, call, tensor, version, not safe)
        return tensor if safe else tensor.clone()

    def _make_hook(self, module_name: str):
        wanted = self._wanted[module_name]

        def hook(module: nn.Module, _inputs: object, output: object) -> None:
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
            if self.reduce is not None:
                self._outputs[name] = self.reduce(name, tensor)
            else:
                self._outputs[name] = self._keep(name, module, call, tensor)
            if self._stop_when_complete and len(self._outputs) == len(self.probes):
                raise CaptureComplete

        return hook
