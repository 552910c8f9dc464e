"""Two-process CPU (gloo) DDP run whose ranks draw different random numbers; records each rank's generator
state before the first step of every epoch, uninterrupted or resumed from the first epoch's checkpoint.

Run by ``test_resume.py``: ``python ddp_rng_script.py OUT_DIR full`` (two epochs, a checkpoint per epoch in
``OUT_DIR/ckpt``), then ``python ddp_rng_script.py OUT_DIR resume`` (epoch 1 again, from epoch 0's
checkpoint). Each rank writes ``<mode><rank>.json``: ``{epoch: fingerprint of its generators}``. As in
``ddp_script.py``, Lightning re-launches the script for rank 1.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from conftest import model_a, moons_tensors

from lsa_train.attacks import PGD
from lsa_train.training import LSARegularizedModule


def rng_digest() -> str:
    """A fingerprint of this process's Python, NumPy and torch generator states."""
    digest = hashlib.sha256(repr(random.getstate()).encode())
    digest.update(repr(np.random.get_state()[1].tolist()).encode())
    digest.update(torch.get_rng_state().numpy().tobytes())
    return digest.hexdigest()


class RecordRNG(L.Callback):
    """Gives each rank its own random stream, and records its generators before every epoch's first step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.states: dict[int, str] = {}

    def setup(self, trainer, pl_module, stage) -> None:
        # after Lightning's DDP setup re-seeds every rank with the seed_everything seed, before a checkpoint
        # is restored: rank-dependent random numbers (e.g. noise, random starts on each rank's own shard)
        torch.manual_seed(1000 + trainer.global_rank)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:  # the epoch's loader iterator exists and its first batch is fetched
            self.states[trainer.current_epoch] = rng_digest()

    def on_train_end(self, trainer, pl_module) -> None:
        Path(f"{self.path}{trainer.global_rank}.json").write_text(json.dumps(self.states))


def main(out: Path, mode: str) -> None:
    L.seed_everything(313, workers=True)
    x, y = moons_tensors(192)
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=64)
    module = LSARegularizedModule(model_a(8), attack=PGD(eps=0.1, steps=2), regularizer=None)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[checkpoint, RecordRNG(out / mode)], default_root_dir=out,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train, val, ckpt_path=out / "ckpt" / "epoch=0.ckpt" if mode == "resume" else None)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # join gloo's threads before exit (see ddp_script.py)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), sys.argv[2])
