"""A callback that SIGKILLs its own process mid-epoch, for the resume tests (importable by the app)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAt(L.Callback):
    """SIGKILLs the process after batch ``batch`` of epoch ``epoch`` (no cleanup, no checkpoint)."""

    def __init__(self, epoch: int, batch: int = 1) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
