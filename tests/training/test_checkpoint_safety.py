import errno

import lightning as L
import pytest
import torch
from fsspec.implementations.local import LocalFileOpener

from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, MVLRefreshCallback


class DiskFullOnEpoch(L.Callback):
    """From epoch ``epoch`` on, every checkpoint file write fails as on a full disk."""

    def __init__(self, epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.epoch = epoch
        self.monkeypatch = monkeypatch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            self.monkeypatch.setattr(LocalFileOpener, "write", full)


def test_failed_checkpoint_write_keeps_the_last_good_checkpoint(tmp_path, loaders, mlp_a, monkeypatch):
    module = LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=1), regularizer=LayerwiseRegularizer(0.1))
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[MVLRefreshCallback(num_samples=16, top_k=1, plot=False), DiskFullOnEpoch(1, monkeypatch),
                   checkpoint],
    )
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(module, *loaders)
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["epoch=0-step=6.ckpt", "last.ckpt"]  # no temporary or half-written file beside them
    for name in files:
        saved = torch.load(tmp_path / "ckpt" / name, weights_only=True)
        assert saved["epoch"] == 0 and saved["lsa_train"]["mvl"]
