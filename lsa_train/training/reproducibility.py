"""Exact resumption: random-number-generator state travels in the checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCallback(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) RNG states with every checkpoint.

    The states are put back as soon as the checkpoint is loaded: before Lightning creates the
    resumed epoch's dataloader iterator (which draws the shuffle seed), with no sanity check in
    between (Lightning skips it when restarting). Shuffling, attack random starts and dropout
    then continue exactly as in an uninterrupted run. Checkpoints are written at epoch ends, so
    a run killed mid-epoch resumes from the last epoch end and replays that epoch identically
    (exact on CPU with deterministic settings). Code that runs between an epoch end and the next
    epoch's first batch must not draw from the global generators; the MVL refresh uses its own
    seeded generator for this reason. Generators owned by other objects travel in those objects'
    state: the data modules' shuffle generator in :meth:`lsa_train.data.LSADataModule.state_dict`.
    :class:`~lsa_train.training.LSARegularizedModule` adds this callback itself when the Trainer
    has none, and the app's ``callbacks=default`` config lists it.
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        np.random.set_state(_numpy_state_from_plain(state_dict["numpy"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


# NumPy's state holds an ndarray, which ``torch.load(weights_only=True)`` refuses; store a tensor.
def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
