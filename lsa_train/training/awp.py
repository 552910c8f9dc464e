"""Adversarial Weight Perturbation (AWP, Wu et al., NeurIPS 2020) as a training-step option."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

#: Added to a layer's gradient norm before dividing by it (as the reference code's ``EPS``).
_TINY = 1e-20

#: ``(parameter, its value before the perturbation)`` for every perturbed parameter.
WeightBackup = list[tuple[nn.Parameter, torch.Tensor]]


class AdversarialWeightPerturbation:
    """Perturbs the weights towards a higher adversarial loss before the training gradient is taken.

    After ``x_adv`` is crafted, a proxy copy of the model (not part of the module's state; refreshed
    from the model every step, so its BatchNorm statistics updates are thrown away) computes the
    gradient ``g_l`` of the base loss for every weight ``w_l`` with at least 2 dimensions (conv and
    linear weights; biases and normalization scales are left alone, as in the reference code). The
    model's weights then move to ``w_l + gamma * ||w_l|| * g_l / ||g_l||``; the training loss and its
    gradient are computed there, and :meth:`restore` copies the saved values back bit-exactly before
    the optimizer steps (so the step applies the gradient taken at the perturbed point to the
    unperturbed weights). The reference's proxy SGD step, rescaled per layer, is the same direction.

    Under DDP every rank perturbs with the gradient of its own batch (as a single-process run per
    shard would); the restore makes the ranks' weights identical again before the averaged step.

    Args:
        gamma: Relative size of the perturbation per layer, ``>= 0``; ``0`` is off (the reference
            uses ``5e-3``).
        warmup: Number of epochs trained without the perturbation first, ``>= 0``.

    Raises:
        ValueError: A negative or non-finite ``gamma``, or a negative or non-integer ``warmup``.
    """

    def __init__(self, gamma: float = 5e-3, warmup: int = 0) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"awp gamma must be a finite number >= 0 (0 = off), got {gamma!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"awp warmup must be an integer number of epochs >= 0, got {warmup!r}")
        self.gamma = float(gamma)
        self.warmup = warmup
        self._proxy: nn.Module | None = None

    @classmethod
    def create(
        cls, spec: AdversarialWeightPerturbation | Mapping[str, Any] | None
    ) -> AdversarialWeightPerturbation | None:
        """An instance from an instance, a mapping ``{gamma, warmup}`` (configs, checkpoints) or ``None``."""
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"gamma", "warmup"})
            if unknown:
                raise ValueError(f"unknown awp keys {unknown}; valid keys are ['gamma', 'warmup']")
            return cls(**dict(spec))
        raise ValueError(
            f"awp must be an AdversarialWeightPerturbation, a dict {{gamma, warmup}} or None, got {spec!r}"
        )

    @property
    def is_off(self) -> bool:
        return self.gamma == 0

    def as_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "warmup": self.warmup}

    def active(self, epoch: int) -> bool:
        """Whether the perturbation is applied in ``epoch`` (0-based)."""
        return not self.is_off and epoch >= self.warmup

    @staticmethod
    def perturbed_names(model: nn.Module) -> list[str]:
        """Names of the parameters AWP perturbs: trainable, with at least 2 dimensions."""
        return [name for name, p in model.named_parameters() if p.requires_grad and p.ndim > 1]

    def proxy_for(self, model: nn.Module) -> nn.Module:
        """The proxy copy of ``model`` with the model's current parameters, buffers and modes.

        Each submodule's train/eval flag is copied, not just the root's: a frozen BatchNorm (eval, running
        statistics) or a Dropout in eval inside a training model stays so in the proxy, so that the
        perturbation is the gradient of the function the model computes.
        """
        proxy = self._proxy
        first = next(model.parameters())
        if proxy is None or next(proxy.parameters()).device != first.device:
            proxy = copy.deepcopy(model)
            for p in proxy.parameters():
                p.grad = None
            self._proxy = proxy
        with torch.no_grad():
            proxy.load_state_dict(model.state_dict())
        for proxy_module, module in zip(proxy.modules(), model.modules(), strict=True):
            proxy_module.training = module.training
        return proxy

    def perturbation(self, model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weight change per perturbed parameter name: ``gamma * ||w|| * g / (||g|| + 1e-20)``.

        Args:
            model: The model being trained (not modified).
            loss_fn: ``loss_fn(net) -> scalar`` the adversarial loss of a network; called on the proxy.
        """
        proxy = self.proxy_for(model)
        names = self.perturbed_names(model)
        params = dict(proxy.named_parameters())
        with torch.enable_grad():
            loss = loss_fn(proxy)
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        weights = dict(model.named_parameters())
        diffs: dict[str, torch.Tensor] = {}
        for name, grad in zip(names, grads):
            if grad is None:  # unused in the forward: nothing to perturb
                continue
            w = weights[name].detach()
            grad = grad.to(w.dtype)
            diffs[name] = grad * (self.gamma * w.norm() / (grad.norm() + _TINY))
        return diffs

    @staticmethod
    def perturb(model: nn.Module, diffs: Mapping[str, torch.Tensor]) -> WeightBackup:
        """Adds ``diffs`` to the model's parameters in place; returns the saved originals."""
        backup: WeightBackup = []
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in diffs:
                    backup.append((p, p.detach().clone()))
                    p.add_(diffs[name])
        return backup

    @staticmethod
    def restore(backup: WeightBackup) -> None:
        """Copies the saved values back (bit-exact)."""
        with torch.no_grad():
            for p, saved in backup:
                p.copy_(saved)

    def __repr__(self) -> str:
        return f"AdversarialWeightPerturbation(gamma={self.gamma}, warmup={self.warmup})"
