"""channels_last and compile_model: faster paths that must not change what is trained."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 4),
    )


def image_loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(96, 3, 8, 8, generator=generator)
    y = torch.randint(0, 4, (96,), generator=generator)
    return DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16), DataLoader(TensorDataset(x[64:], y[64:]), 32)


def fit(module: LSARegularizedModule, tmp_path, steps: int = 4) -> L.Trainer:
    train, val = image_loaders()
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, limit_val_batches=1, val_check_interval=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, train, val)
    return trainer


def at_lr(**kwargs) -> LSARegularizedModule:
    return LSARegularizedModule(
        small_cnn(), attack=PGD(eps=0.05, steps=3, seed=0), regularizer=LayerwiseRegularizer(0.5), mvl=[0], **kwargs
    )


def test_channels_last_converts_model_and_batches(tmp_path):
    module = at_lr(channels_last=True)
    reference = at_lr()
    assert module.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = image_loaders()[0].dataset.tensors[0][:16]
    with torch.no_grad():  # a layout, not a different function: same logits up to float rounding
        logits = module.model(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(logits, reference.model(x), atol=1e-5)
    seen: list[bool] = []
    module.model[0].register_forward_pre_hook(
        lambda _m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    trainer = fit(module, tmp_path)
    assert seen and all(seen)  # training, attack and validation forwards alike
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_compile_model_trains_the_same_weights(tmp_path):
    torch._dynamo.reset()
    compiled = at_lr(compile_model={"backend": "eager"})  # Dynamo's graph capture without a C++ toolchain
    trainer = fit(compiled, tmp_path)
    eager = at_lr()
    fit(eager, tmp_path)
    assert "_compiled_model" in compiled.__dict__
    assert not any("_compiled_model" in key for key in compiled.state_dict())
    assert trainer.callback_metrics["train/lr_term"] > 0  # the eager, hooked forwards still record the MVL
    for ours, theirs in zip(compiled.model.parameters(), eager.model.parameters()):
        assert torch.equal(ours, theirs)


def test_compiled_model_is_used_by_the_attack(tmp_path):
    torch._dynamo.reset()
    module = at_lr(compile_model={"backend": "eager"})
    calls: list[nn.Module] = []
    attack = module.attack
    original = attack.__call__

    class Spy(type(attack)):
        def __call__(self, model, images, labels):
            calls.append(model)
            return original(model, images, labels)

    attack.__class__ = Spy
    fit(module, tmp_path, steps=1)
    assert calls and all(model is module.__dict__["_compiled_model"] for model in calls)


def test_bad_compile_model_value_is_a_clear_error():
    with pytest.raises(ValueError, match=r"compile_model must be true, false or a dict.*got 'yes'"):
        at_lr(compile_model="yes")


@pytest.mark.parametrize("mvl", [[0], [1]])
def test_checkpointed_clean_branch_gives_the_same_gradients_and_statistics(mvl):
    def make(checkpoint_clean: bool) -> LSARegularizedModule:
        return LSARegularizedModule(
            small_cnn(), attack=PGD(eps=0.05, steps=3, seed=0), mvl=mvl,
            regularizer=LayerwiseRegularizer(0.5, checkpoint_clean=checkpoint_clean),
        )

    x, y = image_loaders()[0].dataset.tensors
    x, y = x[:16], y[:16]
    plain, checkpointed = make(False), make(True)
    for module in (plain, checkpointed):
        module.train()
        module.training_step((x, y), 0).backward()
    bn_plain, bn_checkpointed = plain.model[1], checkpointed.model[1]
    assert int(bn_checkpointed.num_batches_tracked) == int(bn_plain.num_batches_tracked) == 2  # clean + adversarial
    assert torch.allclose(bn_checkpointed.running_mean, bn_plain.running_mean, atol=1e-7)
    assert torch.allclose(bn_checkpointed.running_var, bn_plain.running_var, atol=1e-7)
    for (name, ours), theirs in zip(checkpointed.model.named_parameters(), plain.model.parameters()):
        assert ours.grad is not None and torch.allclose(ours.grad, theirs.grad, atol=1e-6), name
