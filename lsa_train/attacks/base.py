"""The :class:`Attack` base class and helpers that leave a model exactly as they found it.

An attack is called as ``attack(model, images, labels)``. The base class does the
bookkeeping (input checks, model mode, BatchNorm buffers, gradient mode, seeding and the
final projection) and calls the subclass's :meth:`Attack.perturb`, which only has to
maximize the loss.
"""

from __future__ import annotations

import contextlib
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from lsa_train.attacks.losses import cross_entropy_per_sample
from lsa_train.attacks.utils import per_sample, project, project_to_ball
from lsa_train.attacks.validation import check_choice, check_clip_range, check_eps
from lsa_train.utils.modes import restored_modes

#: Model modes an attack can craft in (see :func:`preserved_model_state`).
CRAFT_MODES: tuple[str, ...] = ("eval", "train", "keep")

#: Where the iterative attacks keep the input in ``[clip_min, clip_max]`` (see :class:`Attack`, ``clip``).
CLIP_MODES: tuple[str, ...] = ("project", "forward")

#: A loss ``loss_fn(logits, labels)`` returning a scalar or per-sample values ``(N,)``.
LossFn = Callable[[Tensor, Tensor], Tensor]

#: A snapshot of module buffers: ``(module, buffer name, saved copy)`` triples.
BufferSnapshot = list[tuple[nn.Module, str, Tensor]]

_BATCHNORM_BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


# -- model state ------------------------------------------------------------------------------
def buffers_snapshot(model: nn.Module, *, batchnorm_only: bool = True) -> BufferSnapshot:
    """Copies the buffers of ``model`` so that :func:`restore_buffers` can put them back.

    Args:
        model: The module whose buffers are saved (all submodules included).
        batchnorm_only: ``True`` (default) saves only normalization statistics: every buffer of
            a BatchNorm/InstanceNorm module, and any buffer called ``running_mean``,
            ``running_var`` or ``num_batches_tracked`` (custom norm layers). ``False`` saves all
            buffers (e.g. also the power-iteration vectors of spectral normalization).

    Returns:
        The snapshot, a list of ``(module, name, copy)`` triples.
    """
    snapshot: BufferSnapshot = []
    for module in model.modules():
        is_norm = isinstance(module, _NormBase)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is None:
                continue
            if batchnorm_only and not (is_norm or name in _BATCHNORM_BUFFER_NAMES):
                continue
            snapshot.append((module, name, buffer.detach().clone()))
    return snapshot


def batchnorm_buffers_snapshot(model: nn.Module) -> BufferSnapshot:
    """Copies the running statistics of every normalization layer of ``model``.

    Same as ``buffers_snapshot(model, batchnorm_only=True)``; undo with :func:`restore_buffers`.
    """
    return buffers_snapshot(model, batchnorm_only=True)


def restore_buffers(snapshot: BufferSnapshot) -> None:
    """Writes the saved buffers of a :func:`buffers_snapshot` back in place.

    A buffer that was replaced by a tensor of another shape, dtype or device in the meantime is
    re-registered with the saved copy.
    """
    with torch.no_grad():
        for module, name, saved in snapshot:
            current = getattr(module, name, None)
            if (
                isinstance(current, Tensor)
                and current.shape == saved.shape
                and current.dtype == saved.dtype
                and current.device == saved.device
            ):
                current.copy_(saved)
            else:
                setattr(module, name, saved)


@contextlib.contextmanager
def preserved_model_state(model: nn.Module, craft_mode: str = "eval") -> Iterator[nn.Module]:
    """Puts ``model`` in the mode an attack crafts in and restores its state on exit.

    On exit (also when the body raises) the ``training`` flag of every submodule is set back to
    its value on entry, and the saved buffers are written back.

    Args:
        model: The model to protect.
        craft_mode: ``"eval"`` (default) runs the body with ``model.eval()`` and saves the
            normalization statistics only; ``"train"`` runs it with ``model.train()`` (batch
            statistics, dropout active) and saves all buffers; ``"keep"`` leaves the modes as
            they are and saves all buffers.

    Yields:
        ``model``.
    """
    mode = check_choice("craft_mode", craft_mode, CRAFT_MODES)
    snapshot = buffers_snapshot(model, batchnorm_only=mode == "eval")
    with restored_modes(model):
        try:
            if mode == "eval":
                model.eval()
            elif mode == "train":
                model.train()
            yield model
        finally:
            restore_buffers(snapshot)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Disables autocast for ``device_type`` where autocast exists, so losses run in float32."""
    is_available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    supported = is_available(device_type) if is_available is not None else device_type in ("cpu", "cuda")
    if supported:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


# -- the base class ---------------------------------------------------------------------------
class Attack(ABC):
    """Base class of the inner-maximization attacks.

    Subclasses implement :meth:`perturb`; callers use ``attack(model, images, labels)``.

    Args:
        eps: Radius of the perturbation ball, in input units (``>= 0``, finite).
        clip_min: Lower bound of the valid input range. Default: ``0.0``.
        clip_max: Upper bound of the valid input range. Default: ``1.0``.
        loss_fn: ``loss_fn(logits, labels)`` to maximize, returning a scalar or per-sample
            values ``(N,)`` (summed for the gradient). ``logits`` are float32 and the loss runs
            with autocast disabled. Default: ``None``, cross-entropy with mean reduction.
        craft_mode: ``"eval"`` (default), ``"train"`` or ``"keep"``; see
            :func:`preserved_model_state`.
        seed: If given, random starts draw from a ``torch.Generator`` on the input's device
            seeded with it, created afresh on every call (equal seeds give equal outputs).
            Default: ``None``, the global RNG (so ``lightning.seed_everything`` applies).
        clip: Where the valid range is enforced during the iterations. ``"project"`` (default): the
            iterate ``x + delta`` is clamped to ``[clip_min, clip_max]`` after the start and after every
            step, as the TRADES and MART reference code do. ``"forward"``: an ablation that *weakens*
            the attack: ``delta`` is only projected onto the eps ball, the model sees
            ``(x + delta).clamp(clip_min, clip_max)``, so every coordinate pushed outside the range
            gets a zero gradient and stops moving (on a blank background about half the pixels
            freeze after a random start; torch's clamp passes no gradient at the bounds either, so
            without a random start a pixel exactly at ``clip_min`` or ``clip_max`` never moves); the
            output is ``(x + delta).clamp(clip_min, clip_max)``.
            Only the attacks that take a ``clip`` argument (PGD, MART's and TRADES' attacks) use it.

    Shape:
        - images: ``(N, C, H, W)`` or ``(N, D)``, floating point, values in
          ``[clip_min, clip_max]`` (``[0, 1]`` by default).
        - labels: ``(N,)``, int64 class indices.
        - output: same shape, dtype and device as ``images``, detached, within the attack's
          ``eps`` ball around ``images`` and within ``[clip_min, clip_max]``.

    The call leaves the model as it found it: the ``training`` flag of every submodule is
    restored, normalization statistics (and, for ``craft_mode`` ``"train"``/``"keep"``, all
    buffers) are restored, and gradients are taken only with respect to the input
    (``torch.autograd.grad``), so parameters' ``.grad`` never change. It works inside
    ``torch.no_grad()``, ``torch.inference_mode()`` and ``torch.autocast`` (only the model
    forward runs in the autocast dtype; the perturbation stays in the input dtype).
    """

    #: Registry key, set by :func:`~lsa_train.attacks.registry.register_attack`.
    name: ClassVar[str] = ""
    #: Attribute names shown by ``repr`` before the common ones.
    _repr_fields: ClassVar[tuple[str, ...]] = ("eps",)
    #: Whether :meth:`perturb` reads ``labels`` (if not, ``labels`` may be ``None``).
    needs_labels: ClassVar[bool] = True
    #: The perturbation norm, ``"linf"`` or ``"l2"``; ``None`` for no attack (instances may override).
    norm: str | None = "linf"

    def __init__(
        self,
        eps: float,
        *,
        clip_min: float = 0.0,
        clip_max: float = 1.0,
        loss_fn: LossFn | None = None,
        craft_mode: str = "eval",
        seed: int | None = None,
        clip: str = "project",
    ) -> None:
        self.eps = check_eps(eps)
        self.clip_min, self.clip_max = check_clip_range(clip_min, clip_max)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable as loss_fn(logits, labels) or None, got {loss_fn!r}")
        self.loss_fn = loss_fn
        self.craft_mode = check_choice("craft_mode", craft_mode, CRAFT_MODES)
        self.clip = check_choice("clip", clip, CLIP_MODES)
        if seed is not None:
            try:
                seed = operator.index(seed)
            except TypeError:
                raise ValueError(f"seed must be an integer or None, got {seed!r}") from None
        self.seed = seed
        self._rng: torch.Generator | None = None

    # -- properties ----------------------------------------------------------------------
    @property
    def num_forward_backward(self) -> int:
        """How many forward+backward passes through the model one call costs."""
        return 1

    @property
    def is_random(self) -> bool:
        """Whether the output depends on the random number generator (random start)."""
        return False

    # -- calling -------------------------------------------------------------------------
    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor | None) -> Tensor:
        """Crafts adversarial examples for ``images``.

        Args:
            model: Classifier mapping ``images`` to logits ``(N, K)``.
            images: Clean inputs ``(N, ...)``, floating point, in ``[clip_min, clip_max]``.
            labels: True classes ``(N,)`` (int64). ``None`` is accepted by attacks that do not
                use labels (``needs_labels`` is ``False``).

        Returns:
            The adversarial inputs: detached, same shape/dtype/device as ``images``, within the
            ``eps`` ball around ``images`` and within ``[clip_min, clip_max]``.
        """
        self._check_inputs(images, labels)
        if images.shape[0] == 0:
            return images.detach().clone()
        with torch.inference_mode(False):
            x = images.detach()
            x = x.clone() if x.is_inference() else x
            y = labels
            if y is not None:
                y = y.detach()
                y = y.clone() if y.is_inference() else y
                if not y.is_floating_point() and y.dtype != torch.int64:
                    y = y.long()
            with preserved_model_state(model, self.craft_mode), torch.enable_grad():
                self._rng = self._make_generator(x.device)
                try:
                    x_adv = self.perturb(model, x, y)
                finally:
                    self._rng = None
            with torch.no_grad():
                return self._project(x_adv.detach().to(x.dtype), x)

    @abstractmethod
    def perturb(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """Returns perturbed ``images``; called by ``__call__`` with the model already prepared.

        ``images`` and ``labels`` are detached; gradients are enabled. Must not modify
        ``images`` in place; should use :meth:`_loss_and_grad` (gradients w.r.t. the input only).
        """

    def __repr__(self) -> str:
        fields: dict[str, Any] = {name: getattr(self, name) for name in self._repr_fields}
        fields.update(clip_min=self.clip_min, clip_max=self.clip_max)
        if self.loss_fn is not None:
            fields["loss_fn"] = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        fields.update(craft_mode=self.craft_mode, seed=self.seed)
        if self.clip != "project":  # the default stays out of the repr; the weakened ablation shows
            fields["clip"] = self.clip
        body = ", ".join(f"{key}={_format(value)}" for key, value in fields.items())
        return f"{type(self).__name__}({body})"

    # -- helpers for subclasses ----------------------------------------------------------
    def _check_inputs(self, images: Tensor, labels: Tensor | None) -> None:
        if not isinstance(images, Tensor) or not images.is_floating_point():
            dtype = getattr(images, "dtype", type(images).__name__)
            raise ValueError(f"images must be a floating-point tensor, got {dtype}")
        if images.ndim < 2:
            raise ValueError(
                f"images must have shape (N, ...) with at least 2 dims, got {tuple(images.shape)}"
            )
        if labels is None:
            if self.needs_labels:
                raise ValueError(f"{type(self).__name__} needs labels, got None")
            return
        if not isinstance(labels, Tensor) or labels.ndim == 0 or labels.shape[0] != images.shape[0]:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(
                f"images and labels must have the same batch size, got images {tuple(images.shape)} "
                f"and labels {shape}"
            )

    def _make_generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        return generator

    def _project(self, x_adv: Tensor, images: Tensor) -> Tensor:
        """Projects onto the ``eps`` ball of :attr:`norm` around ``images`` and into the valid range."""
        return project(x_adv, images, self.eps, self.norm or "linf", self.clip_min, self.clip_max)

    def _step_project(self, x_adv: Tensor, images: Tensor) -> Tensor:
        """Projection of the iterate after the start and each step: onto the ball and the valid range
        (``clip="project"``, :meth:`_project`), or onto the ball only (``clip="forward"``)."""
        if self.clip == "project":
            return self._project(x_adv, images)
        return project_to_ball(x_adv, images, self.eps, self.norm or "linf")

    def _model_input(self, x_adv: Tensor) -> Tensor:
        """What the model sees: the iterate itself (``clip="project"``: it is already in range), or the
        iterate clamped to ``[clip_min, clip_max]`` (``clip="forward"``: zero gradient outside)."""
        if self.clip == "project":
            return x_adv
        return x_adv.clamp(self.clip_min, self.clip_max)

    def _logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """Runs the model on :meth:`_model_input` of ``x`` (under any ambient autocast); float32 logits."""
        logits = model(self._model_input(x))
        if not isinstance(logits, Tensor):
            raise TypeError(f"the model must return a logits tensor (N, K), got {type(logits).__name__}")
        return logits.float()

    def _scalar_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss to ascend: ``loss_fn`` (summed if per-sample) or mean cross-entropy, in float32."""
        with autocast_off(logits.device.type):
            loss = F.cross_entropy(logits, labels) if self.loss_fn is None else self.loss_fn(logits, labels)
        return loss.sum() if loss.ndim else loss

    def _per_sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-sample loss ``(N,)`` for ranking candidates: ``loss_fn`` if it returns ``(N,)``, else CE."""
        with autocast_off(logits.device.type):
            if self.loss_fn is not None:
                loss = self.loss_fn(logits, labels)
                if loss.shape == (logits.shape[0],):
                    return loss.detach().float()
            return cross_entropy_per_sample(logits, labels).detach()

    def _loss_and_grad(self, model: nn.Module, x_adv: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(grad of the loss w.r.t. x_adv, logits)``, both detached; parameters get no grad."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self._logits(model, x_adv)
        (grad,) = torch.autograd.grad(self._scalar_loss(logits, labels), [x_adv])
        return grad.detach(), logits.detach()

    @staticmethod
    def _fooled(logits: Tensor, labels: Tensor) -> Tensor:
        """Boolean ``(N,)``: whether each sample is misclassified (all ``False`` for soft labels)."""
        if labels.ndim != 1:
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        return logits.argmax(dim=1) != labels

    @staticmethod
    def _keep_better(
        best: tuple[Tensor, Tensor, Tensor], candidate: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Merges two ``(x_adv, loss, fooled)`` results of restarts, per sample.

        A sample keeps the first candidate that fools the model; until one does, it keeps the
        candidate with the highest loss.
        """
        x_best, loss_best, fooled_best = best
        x_new, loss_new, fooled_new = candidate
        take = ~fooled_best & (fooled_new | (loss_new > loss_best))
        return (
            torch.where(per_sample(take, x_best), x_new, x_best),
            torch.where(take, loss_new, loss_best),
            fooled_best | fooled_new,
        )

    def _uniform_like(self, x: Tensor, low: float, high: float) -> Tensor:
        """Uniform noise in ``[low, high)`` shaped like ``x`` from the attack's generator."""
        return torch.empty_like(x).uniform_(low, high, generator=self._rng)

    def _normal_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x`` from the attack's generator."""
        return torch.empty_like(x).normal_(generator=self._rng)


def _format(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".en") else f"{text}.0"
    return repr(value)
