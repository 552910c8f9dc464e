"""EMA of the weights (``callbacks=ema``, :class:`lsa_train.training.EMAWeightAveraging`): the averaged weights
are the ones validated, checkpointed and tested, the training attacks run on the live weights, BatchNorm
statistics follow ``use_buffers``, and a resume from a checkpoint continues with the same average."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsa_train.attacks import PGD
from lsa_train.training import EMAWeightAveraging, LSARegularizedModule, RNGStateCallback
from lsa_train.training.ema import checkpoint_averaging

DECAY = 0.8  # a short average: after a few steps it differs clearly from both the live and the first weights


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, then a linear head; input (N, 1, 8, 8), 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point parameters and buffers of the network (``num_batches_tracked`` is an int counter)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names=None) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in (names or a))


class RecordingPGD(PGD):
    """PGD that records the network weights it attacks."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[dict[str, torch.Tensor]] = []

    def __call__(self, model, images, labels):
        self.seen.append(_state(model))
        return super().__call__(model, images, labels)


class Recorder(L.Callback):
    """The live weights after every optimizer step, their EMA computed here, and the weights validated and tested."""

    def __init__(self, use_buffers: bool) -> None:
        self.use_buffers = use_buffers
        self.live: list[dict[str, torch.Tensor]] = []
        self.ema: dict[str, torch.Tensor] | None = None
        self.validated: list[tuple[dict, dict]] = []  # (weights in the module, the EMA computed here)
        self.tested: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        live = _state(pl_module.model)
        self.live.append(live)
        if self.ema is None:
            self.ema = dict(live)
        else:
            self.ema = {k: DECAY * self.ema[k] + (1 - DECAY) * v for k, v in live.items()}
        if not self.use_buffers:  # buffers are the live model's
            self.ema.update({k: v for k, v in live.items() if "running" in k})

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.ema is not None and batch_idx == 0:
            self.validated.append((_state(pl_module.model), dict(self.ema)))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.tested.append(_state(pl_module.model))


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) * 30).long() % 3
    train = DataLoader(TensorDataset(x, y), batch_size=8)  # a fixed order: a resume sees the same batches
    return train, DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)


def _module(attack: PGD | None = None) -> LSARegularizedModule:
    torch.manual_seed(0)
    return LSARegularizedModule(TinyCNN(), attack=attack or PGD(eps=0.1, steps=2), regularizer=None,
                                test_eps_grid=[0.0], optimizer=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9))


def _trainer(tmp_path: Path, callbacks: list, max_epochs: int) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=max_epochs, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=callbacks, deterministic=True)


@pytest.mark.parametrize("use_buffers", [True, False])
def test_ema_weights_are_validated_checkpointed_and_tested_and_attacks_see_the_live_ones(
    tmp_path: Path, use_buffers: bool
) -> None:
    attack = RecordingPGD(eps=0.1, steps=2)
    module = _module(attack)
    first = _state(module.model)
    recorder = Recorder(use_buffers)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch_{epoch}", save_top_k=-1,
                                 auto_insert_metric_name=False, monitor="val/acc_pgd", mode="max")
    train, val = _loaders()
    trainer = _trainer(tmp_path, [EMAWeightAveraging(decay=DECAY, use_buffers=use_buffers), recorder, checkpoint], 2)
    trainer.fit(module, train, val)
    steps = len(recorder.live)
    assert steps == 12 and len(attack.seen) == steps

    # the training attack ran on the live weights: those after the previous optimizer step, across validation
    assert _close(attack.seen[0], first)
    for t in range(1, steps):
        assert _close(attack.seen[t], recorder.live[t - 1]), t
    assert not _close(attack.seen[-1], recorder.ema)  # ... which are not the averaged ones

    # validation ran on the EMA (buffers: averaged, or the live model's)
    assert len(recorder.validated) == 2
    for in_module, ema in recorder.validated:
        assert _close(in_module, ema)
    running = [k for k in first if "running" in k]
    assert running  # TinyCNN has BatchNorm
    last_live = recorder.live[-1]
    assert _close(recorder.ema, last_live, running) is (not use_buffers)

    # every checkpoint holds the EMA as its weights and the live weights for resuming
    saved = torch.load(tmp_path / "ckpt" / "epoch_1.ckpt", weights_only=True)
    weights = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    live = {k.removeprefix("model."): v for k, v in saved["current_model_state"].items() if k.startswith("model.")}
    assert _close({k: weights[k] for k in first}, recorder.ema)
    assert _close({k: live[k] for k in first}, last_live)
    assert checkpoint_averaging(saved) == f"EMA (decay {DECAY:g})"
    # after fit the module holds the EMA (Lightning copies it in at the end of training)
    assert _close(_state(module.model), recorder.ema)

    # the test of a checkpoint after fit, on the same trainer, measures its EMA weights, not its live ones
    earlier = tmp_path / "ckpt" / "epoch_0.ckpt"
    trainer.test(module, val, ckpt_path=str(earlier), verbose=False, weights_only=True)
    tested_ckpt = torch.load(earlier, weights_only=True)
    expected = {k.removeprefix("model."): v for k, v in tested_ckpt["state_dict"].items() if k.startswith("model.")}
    assert _close(recorder.tested[0], {k: expected[k] for k in first})
    live0 = {k.removeprefix("model."): v for k, v in tested_ckpt["current_model_state"].items()
             if k.startswith("model.")}
    assert not _close(recorder.tested[0], {k: live0[k] for k in first})


def test_resuming_from_a_checkpoint_continues_with_the_same_average(tmp_path: Path) -> None:
    train, val = _loaders()

    def run(folder: str, epochs: int, ckpt_path: str | None = None) -> dict:
        L.seed_everything(3, workers=True)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, filename="last", enable_version_counter=False)
        trainer = _trainer(tmp_path / folder, [EMAWeightAveraging(decay=DECAY), RNGStateCallback(), checkpoint],
                           epochs)
        trainer.fit(_module(), train, val, ckpt_path=ckpt_path, weights_only=True)
        return torch.load(tmp_path / folder / "last.ckpt", weights_only=True)

    straight = run("straight", 2)
    run("resumed", 1)
    resumed = run("resumed", 2, ckpt_path=str(tmp_path / "resumed" / "last.ckpt"))
    assert resumed["global_step"] == straight["global_step"] == 12
    assert int(resumed["averaging_state"]["n_averaged"]) == int(straight["averaging_state"]["n_averaged"]) == 12
    for key in ("state_dict", "current_model_state"):  # the EMA and the live weights
        assert straight[key].keys() == resumed[key].keys()
        for name, tensor in straight[key].items():
            assert torch.allclose(resumed[key][name].float(), tensor.float(), atol=1e-6), (key, name)
    # the two are not the same tensors: the comparison above says something
    assert not torch.allclose(straight["state_dict"]["model.head.weight"],
                              straight["current_model_state"]["model.head.weight"])


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9"])
def test_a_decay_outside_zero_one_is_refused(decay: object) -> None:
    with pytest.raises(ValueError, match=rf"decay={decay!r} is invalid: it must be a number strictly between 0 and 1"):
        EMAWeightAveraging(decay=decay)  # type: ignore[arg-type]


def test_a_run_shorter_than_the_average_is_said() -> None:
    ema = EMAWeightAveraging(decay=0.999)
    note = ema.horizon_note(230)
    assert note is not None and "about 1000 optimizer steps" in note and "made 230" in note
    assert "80%" in note  # 0.999 ** 229
    assert ema.horizon_note(5000) is None
    assert "BatchNorm statistics averaged too" in ema.describe()
    assert "of the live model" in EMAWeightAveraging(decay=0.99, use_buffers=False).describe()


def test_use_buffers_false_without_buffers_is_said() -> None:
    no_buffers, with_bn = nn.Linear(2, 2), TinyCNN()
    live = EMAWeightAveraging(decay=0.99, use_buffers=False)
    assert live.describe(no_buffers) == "EMA (decay 0.99)"
    assert "use_buffers=false has no effect" in live.inert_note(no_buffers)
    assert live.inert_note(with_bn) is None and EMAWeightAveraging().inert_note(no_buffers) is None
    assert live.describe(with_bn) == "EMA (decay 0.99; BatchNorm statistics of the live model)"


@pytest.mark.gpu
def test_the_average_lives_on_the_training_device(tmp_path: Path) -> None:
    # Lightning makes the average in setup(), before the module moves to the GPU
    train, val = _loaders()
    ema = EMAWeightAveraging(decay=DECAY)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="gpu", devices=1, max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        enable_checkpointing=False, callbacks=[ema])
    trainer.fit(_module(), train, val)
    assert ema._average_model is not None
    assert {p.device.type for p in ema._average_model.parameters()} == {"cuda"}
