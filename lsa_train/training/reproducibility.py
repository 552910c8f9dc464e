"""Exact resumption: random-number-generator state travels in the checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


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

    Under multi-process training (DDP) every process has generators of its own, and only rank 0
    writes the checkpoint: :meth:`state_dict` gathers every rank's states (a collective call, made
    on all ranks, as Lightning does when it saves a checkpoint) and stores them under ``"ranks"``;
    :meth:`load_state_dict` gives each rank its own. Data-loader workers seed their augmentation
    per sample from the data module's saved generator (:mod:`lsa_train.data.seeding`).
    """

    def state_dict(self) -> dict[str, Any]:
        """This process's states at the top level (rank 0's in a DDP checkpoint), plus every rank's under
        ``"ranks"`` (a list indexed by global rank) when several processes train."""
        state = _rng_state()
        if _world_size() > 1:
            ranks: list[Any] = [None] * _world_size()
            torch.distributed.all_gather_object(ranks, state)
            state = {**state, "ranks": ranks}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores this process's states: its own rank's entry when the checkpoint has one per rank."""
        ranks = state_dict.get("ranks")
        world_size, rank = _world_size(), _rank()
        if world_size > 1 and (ranks is None or len(ranks) != world_size):
            saved = "one process" if ranks is None else f"{len(ranks)} processes"
            rank_zero_warn(
                f"RNGStateCallback: the checkpoint holds the random states of {saved}, the run has {world_size}: "
                "ranks without a saved state take rank 0's, so this resume is not exact"
            )
        if ranks is not None and rank < len(ranks):
            state_dict = ranks[rank]
        _set_rng_state(state_dict)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch CPU (and initialized CUDA) generator states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
