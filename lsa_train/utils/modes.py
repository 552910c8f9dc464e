"""Train/eval mode helpers that give every submodule back its own mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def restored_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Sets the ``training`` flag of every submodule back to its value on entry, on exit.

    ``model.train(was_training)`` is not enough: it sets one flag on every submodule, so a layer the
    user left in eval mode (e.g. a frozen BatchNorm in a model in train mode) would come back in
    train mode.

    Yields:
        ``model``, whose modes the body may change freely.
    """
    modules = list(model.modules())
    flags = [module.training for module in modules]
    try:
        yield model
    finally:
        for module, flag in zip(modules, flags):
            module.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Runs the body with ``model.eval()``; every submodule gets its own mode back on exit."""
    with restored_modes(model):
        model.eval()
        yield model
