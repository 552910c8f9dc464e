"""An exponential moving average (EMA) of the weights, through Lightning's own ``WeightAveraging`` callback.

``WeightAveraging`` keeps a ``torch.optim.swa_utils.AveragedModel`` of the module, updates it after every
optimizer step, swaps the averaged weights in for validation and copies them into the module when training
ends. Its checkpoints hold the averaged weights as ``state_dict`` (what ``lsa-evaluate``, ``lsa-analyze`` and
``trainer.test(ckpt_path=...)`` load) and the live ones as ``current_model_state`` (what a resume continues
training from), with the averaging state (``n_averaged``) beside them, so a resumed run continues with the same
average as an uninterrupted one.

:class:`EMAWeightAveraging` adds the EMA rule (``torch.optim.swa_utils.get_ema_multi_avg_fn``), a checked
``decay``, and one fix: Lightning's callback, when a checkpoint is loaded outside fitting (``trainer.test(
ckpt_path=best)`` after ``fit`` on the same trainer), puts the checkpoint's *live* weights back into the module,
so the test would not measure the weights that were validated and checkpointed. Here a checkpoint loaded for
testing or validation keeps its averaged ``state_dict``. And the average is moved to the module's device at fit
start (Lightning makes it in ``setup()``, before the strategy moves the module, i.e. on the CPU).

What is averaged: every parameter; with ``use_buffers=True`` (Lightning's default, kept here) also every
buffer, so BatchNorm running statistics are an EMA (same decay) of the live model's running statistics, which
is what the averaged weights are validated and tested with. With ``use_buffers=False`` the averaged model's
buffers are the live model's at each update (``AveragedModel`` copies them), so BatchNorm statistics are those
of the live weights. The attacks of the training step always run on the live weights: the averaged ones are
only in the module during validation and after training ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

#: The checkpoint key where ``WeightAveraging`` keeps the live (training) weights.
LIVE_STATE_KEY = "current_model_state"


class EMAWeightAveraging(WeightAveraging):
    """EMA of the weights: ``w_ema <- decay * w_ema + (1 - decay) * w`` after every optimizer step (the first
    update copies the live weights).

    Args:
        decay: In (0, 1). The average spans about ``1 / (1 - decay)`` optimizer steps (0.999: ~1000 steps).
        use_buffers: Average the buffers too (BatchNorm running statistics); ``False``: the live model's.

    Raises:
        ValueError: ``decay`` outside (0, 1) (0 would be the live weights, 1 the initial ones), or
            ``use_buffers`` not a bool.
    """

    def __init__(self, decay: float = 0.999, use_buffers: bool = True) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay={decay!r} is invalid: it must be a number strictly between 0 and 1 (e.g. 0.999, "
                             "an average over about the last 1000 steps; 0 would be the live weights, 1 the first)")
        if not isinstance(use_buffers, bool):
            raise ValueError(f"use_buffers={use_buffers!r} must be true (average BatchNorm statistics too) or false "
                             "(keep the live model's)")
        super().__init__(use_buffers=use_buffers, multi_avg_fn=get_ema_multi_avg_fn(float(decay)))
        self.decay = float(decay)
        self.use_buffers = use_buffers

    def describe(self, module: nn.Module | None = None) -> str:
        """``EMA (decay 0.999; ...)`` with what happens to the buffers of ``module`` (BatchNorm statistics), for
        the run summary; without buffers (no BatchNorm), just the decay."""
        if module is not None and not any(True for _ in module.buffers()):
            return f"EMA (decay {self.decay:g})"
        buffers = "BatchNorm statistics averaged too" if self.use_buffers else "BatchNorm statistics of the live model"
        return f"EMA (decay {self.decay:g}; {buffers})"

    def inert_note(self, module: nn.Module) -> str | None:
        """A summary line when ``use_buffers=false`` was chosen for a model without buffers (no effect)."""
        if self.use_buffers or any(True for _ in module.buffers()):
            return None
        return "callbacks.ema.use_buffers=false has no effect: the model has no buffers (no BatchNorm statistics)"

    def horizon_note(self, updates: int) -> str | None:
        """A summary line when the run made fewer updates than the average spans: the EMA weights then still hold
        a large share of the first step's weights (``decay ** (updates - 1)``)."""
        span = 1.0 / (1.0 - self.decay)
        if updates <= 0 or updates >= span:
            return None
        first = math.pow(self.decay, updates - 1)
        return (f"the EMA of the weights spans about {span:.0f} optimizer steps (decay {self.decay:g}) but the run "
                f"made {updates}: the averaged weights still hold {100 * first:.0f}% of the first step's weights; "
                "lower callbacks.ema.decay (e.g. 1 - 10/steps) for a run this short")

    @property
    def updates(self) -> int:
        """How many optimizer steps the average has taken in (restored on resume)."""
        model = self._average_model
        return int(model.n_averaged) if model is not None else 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's setup() made the average before the strategy moved the module to its device, so on a GPU it
        # would sit on the CPU: every step would copy all weights to the host. Keep it beside the module.
        if self._average_model is not None:
            self._average_model.to(pl_module.device)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay, "use_buffers": self.use_buffers}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """When fitting (a resume): Lightning's restore of the live weights and the average. Otherwise (a test or
        validation of a checkpoint) nothing: the module keeps the checkpoint's ``state_dict``, the EMA weights."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def checkpoint_averaging(checkpoint: Mapping[str, Any]) -> str | None:
    """What the ``state_dict`` of a Lightning checkpoint holds when it is not the live weights: ``EMA (decay
    0.999)`` for :class:`EMAWeightAveraging`, ``averaged weights (<callback>)`` for another ``WeightAveraging``;
    ``None`` for a checkpoint without weight averaging."""
    if LIVE_STATE_KEY not in checkpoint:
        return None
    states = checkpoint.get("callbacks")
    for name, state in (states.items() if isinstance(states, Mapping) else ()):
        if str(name).startswith(EMAWeightAveraging.__qualname__) and isinstance(state, Mapping):
            decay = state.get("decay")
            if isinstance(decay, int | float) and not isinstance(decay, bool):
                return f"EMA (decay {float(decay):g})"
    names = [str(n) for n in (states or {}) if "Averag" in str(n)] if isinstance(states, Mapping) else []
    return f"averaged weights ({names[0]})" if names else "averaged weights"
