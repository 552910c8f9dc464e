"""AT-LR on moons for a few epochs; optionally SIGKILLs itself mid-epoch, or resumes.

``python resume_script.py OUT_DIR [--kill-at-epoch E] [--resume]``: writes
``OUT_DIR/final.pt`` (the model's state dict) when training completes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from conftest import model_a, moons_tensors

from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, MVLRefreshCallback, RNGStateCallback

EPOCHS = 4


class KillMidEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at-epoch", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    L.seed_everything(313, workers=True)
    x, y = moons_tensors(256)
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=64)
    module = LSARegularizedModule(model_a(16), attack=PGD(eps=0.1, steps=3), regularizer=LayerwiseRegularizer(0.5))
    callbacks: list[L.Callback] = [
        MVLRefreshCallback(num_samples=48, top_k=1, plot=False),
        RNGStateCallback(),
        L.pytorch.callbacks.ModelCheckpoint(dirpath=args.out / "ckpt", save_last=True),
    ]
    if args.kill_at_epoch is not None:
        callbacks.append(KillMidEpoch(args.kill_at_epoch))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, default_root_dir=args.out,
    )
    ckpt = args.out / "ckpt" / "last.ckpt" if args.resume else None
    trainer.fit(module, train, val, ckpt_path=ckpt)
    history = callbacks[0].history
    torch.save({"state_dict": module.model.state_dict(), "mvl": module.mvl, "history": history}, args.out / "final.pt")


if __name__ == "__main__":
    main()
