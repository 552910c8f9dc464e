"""Checkpoints as data: what a resumed run takes from a checkpoint's callback state, and where Lightning may
write or delete checkpoint files (see :mod:`lsa_train.writes`, the one write door)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lsa_train.writes import WriteOutsideError, check_write_path

log = logging.getLogger(__name__)

#: Keys of a ``ModelCheckpoint`` state that name files (``best_k_models`` maps files to scores).
CHECKPOINT_PATH_KEYS: tuple[str, ...] = ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath")


class GuardedCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that writes and deletes checkpoint files only inside ``run_dir``.

    A save outside is refused (:class:`~lsa_train.writes.WriteOutsideError`); a deletion outside or of a
    folder (a ``ModelCheckpoint`` whose restored state names such a path) is skipped and recorded in
    :attr:`refused`, for the run summary.
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.refused: list[str] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        check_write_path(path, self.run_dir, "checkpoint file")
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)

    def remove_checkpoint(self, path: str | Path) -> None:
        try:
            target = check_write_path(path, self.run_dir, "checkpoint to delete")
            if target.is_dir():
                raise WriteOutsideError(f"checkpoint to delete '{path}' is a folder, not a checkpoint file")
        except WriteOutsideError as err:
            self.refused.append(f"a checkpoint was not deleted: {err}")
            log.warning("%s", err)
            return
        target.unlink(missing_ok=True)


def _plain_file_inside(value: Any, folder: Path) -> bool:
    """``value`` names a plain file path (no URL, no ``~``) directly in ``folder``, not a symlink or a folder."""
    if not isinstance(value, str) or not value or "://" in value or value.startswith("~"):
        return False
    path = Path(value)
    if not path.is_absolute() or path.parent != folder or path.is_symlink() or path.is_dir():
        return False
    return path.suffix == ".ckpt"


class CheckpointStateGuard(L.Callback):
    """On a resume, drops every path of a checkpoint's ``ModelCheckpoint`` state that is not a plain ``.ckpt``
    file in the run's checkpoints folder, before Lightning restores it (Lightning deletes a restored
    ``best_model_path`` when a better epoch replaces it, recursively, through any filesystem URL).

    Callbacks' ``on_load_checkpoint`` hooks all run before any callback's ``load_state_dict``, so the state
    is clean when ``ModelCheckpoint`` reads it. What was dropped is in :attr:`dropped` (for the summary).
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir).absolute()
        self.dropped: list[str] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks")
        if not isinstance(states, Mapping):
            return
        for name, state in states.items():
            if isinstance(state, dict) and any(k in state for k in (*CHECKPOINT_PATH_KEYS, "best_k_models")):
                self._clean(str(name).split("{", 1)[0], state)

    def _clean(self, name: str, state: dict[str, Any]) -> None:
        for key in CHECKPOINT_PATH_KEYS:
            value = state.get(key)
            if not value:
                continue
            inside = (str(value) == str(self.checkpoint_dir)) if key == "dirpath" else _plain_file_inside(
                value, self.checkpoint_dir)
            if not inside:
                self._drop(name, key, value)
                state[key] = "" if key != "dirpath" else None
        models = state.get("best_k_models")
        if isinstance(models, Mapping):
            kept = {k: v for k, v in models.items() if _plain_file_inside(k, self.checkpoint_dir)}
            for path in set(models) - set(kept):
                self._drop(name, "best_k_models", path)
            state["best_k_models"] = kept
        elif models is not None:
            self._drop(name, "best_k_models", models)
            state["best_k_models"] = {}

    def _drop(self, name: str, key: str, value: Any) -> None:
        what = "not this run's checkpoints folder" if key == "dirpath" else "not a .ckpt file in"
        line = (f"the checkpoint's {name} state named {key}={str(value)[:120]!r}, {what} "
                f"'{self.checkpoint_dir}': dropped, so it is neither reused nor deleted")
        self.dropped.append(line)
        log.warning("%s", line)
