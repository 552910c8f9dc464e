"""A callback that saves the model's weights when fitting ends, for the app checkpoint tests (importable by
the app as ``+callbacks.final._target_=final_weights.FinalWeights``)."""

from __future__ import annotations

import lightning as L
import torch


class FinalWeights(L.Callback):
    """Writes ``{"state_dict", "epoch", "global_step"}`` of the fitted module to ``path`` at ``on_train_end``
    (before the app's test loads the best checkpoint)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state_dict": state, "epoch": trainer.current_epoch, "global_step": trainer.global_step},
                   self.path)
