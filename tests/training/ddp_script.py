"""Two-process CPU (gloo) DDP run of AT-LR with AWP from epoch 1; each rank writes its final MVL and weights.

Run by ``test_callback.py`` in a subprocess: ``python ddp_script.py OUT_DIR``. Lightning's
``ddp`` strategy re-launches this script for rank 1 (with ``LOCAL_RANK=1``). Each rank gets its
own validation samples, so the MVL refresh's held-out subset differs between the ranks: only
the broadcast of rank 0's analysis makes them agree.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from conftest import model_a, moons_tensors

from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, MVLRefreshCallback


def main(out: Path) -> None:
    L.seed_everything(313, workers=True)
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning for the re-launched rank
    x, y = moons_tensors(288)
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    held_out = slice(192 + 48 * rank, 240 + 48 * rank)  # rank 0: samples 192-239, rank 1: 240-287
    val = DataLoader(TensorDataset(x[held_out], y[held_out]), batch_size=32)
    module = LSARegularizedModule(
        model_a(16), attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.5),
        awp={"gamma": 5e-3, "warmup": 1},
    )
    assert module.awp is not None
    perturbations: list[int] = []
    compute = module.awp.perturbation

    def counted(*args, **kwargs):  # each rank perturbs with its own shard's gradient
        perturbations.append(module.current_epoch)
        return compute(*args, **kwargs)

    module.awp.perturbation = counted
    callback = MVLRefreshCallback(num_samples=48, eta=0.0, plot=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], default_root_dir=out,
    )
    trainer.fit(module, train, val)
    weights = [round(float(p.detach().double().sum()), 10) for p in module.model.parameters()]
    result = {
        "rank": trainer.global_rank,
        "local_rank_env": rank,
        "analysis_subset": callback._subset[0].sum().item() if callback._subset is not None else None,
        "world_size": trainer.world_size,
        "mvl": module.mvl,
        "history": callback.history,
        "weights": weights,
        "awp_epochs": perturbations,
        "awp_restored": module._awp_backup is None,
        "val_acc_clean": float(trainer.callback_metrics["val/acc_clean"]),
        "train_epoch_means": {key: float(trainer.callback_metrics[key]) for key in ("train/loss", "train/base_loss")},
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        # gloo's threads must be joined before exit, or the process can abort at teardown
        # ("terminate called without an active exception")
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
