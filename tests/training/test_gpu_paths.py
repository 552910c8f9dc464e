"""The GPU code paths (bf16 autocast, channels_last, torch.compile, the LSA term's memory), each run on
the CPU here and on CUDA by ``pytest -m gpu`` (``experiments/bench/gpu_check.py``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsa_train.analysis.measures import relative_error
from lsa_train.attacks import PGD, create_attack, list_attacks
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
ATTACKS = [name for name in list_attacks() if name != "none"]


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 4),
    )


def batch(device: str, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=generator)
    y = torch.randint(0, 4, (n,), generator=generator)
    return x.to(device), y.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_keep_float32_perturbations_under_bf16_autocast(device, name):
    model = conv_net().to(device).train()
    buffers = {key: value.clone() for key, value in model.named_buffers()}
    x, y = batch(device)
    attack = create_attack(name, eps=0.1, **({} if name.startswith("fgsm") else {"steps": 3}))
    with torch.autocast(device, dtype=torch.bfloat16):
        x_adv = attack(model, x, y)
    assert x_adv.dtype == torch.float32 and x_adv.device == x.device
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if attack.norm == "linf" else delta.norm(dim=1)
    assert torch.isfinite(x_adv).all() and bool((size <= 0.1 + 1e-6).all())
    assert float(size.max()) > 0.01  # it moved: bf16 gradients still give an ascent direction
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key


@pytest.mark.parametrize("device", DEVICES)
def test_at_lr_step_under_bf16_and_channels_last_matches_float32(device):
    def module(channels_last: bool) -> LSARegularizedModule:
        return LSARegularizedModule(
            conv_net(), attack=PGD(eps=0.05, steps=3, seed=0), regularizer=LayerwiseRegularizer(0.5), mvl=[0, 1],
            channels_last=channels_last,
        ).to(device)

    x, y = batch(device)
    reference, fast = module(False), module(True)
    seen: list[torch.dtype] = []
    original = PGD.__call__

    def spy(self, model, images, labels):
        x_adv = original(self, model, images, labels)
        seen.append(x_adv.dtype)
        return x_adv

    losses = []
    for mod, channels_last in ((reference, False), (fast, True)):
        mod.train()
        xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(PGD, "__call__", spy)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=channels_last):
                loss = mod.training_step((xb, y), 0)
        loss.backward()
        losses.append(loss)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in mod.parameters())
    assert seen == [torch.float32, torch.float32]
    assert torch.allclose(losses[0], losses[1], rtol=0.05)  # bf16 rounding only


@pytest.mark.parametrize("device", DEVICES)
def test_fit_with_every_speed_switch(device, tmp_path):
    """bf16-mixed + channels_last + compile_model (Inductor on CUDA; the eager backend on a CPU, which
    has no C++ toolchain here) + checkpoint_clean: a short fit with finite losses."""
    torch._dynamo.reset()
    module = LSARegularizedModule(
        conv_net(), attack=PGD(eps=0.05, steps=3), regularizer=LayerwiseRegularizer(0.5, checkpoint_clean=True),
        mvl=[1], channels_last=True, compile_model={} if device == "cuda" else {"backend": "eager"},
    )
    x, y = batch("cpu", 64)
    trainer = L.Trainer(
        accelerator=device, devices=1, precision="bf16-mixed", max_steps=3, limit_val_batches=1, val_check_interval=3,
        logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x, y), batch_size=32))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/lr_term"] > 0
    assert 0 <= float(metrics["val/acc_pgd"]) <= float(metrics["val/acc_clean"]) + 1e-6
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_relative_error_keeps_no_copy_of_bf16_channels_last_features(device):
    """The LSA term saves the feature maps the network holds, not float32 or flattened copies of them."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, 6, 6, generator=generator).to(device, torch.bfloat16)
    b = (a.float() + 0.1 * torch.randn(8, 16, 6, 6, generator=generator).to(device)).to(torch.bfloat16)
    a = a.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    b = b.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cm = relative_error(a, b)
    large = [t for t in saved if t.numel() == a.numel()]
    assert len(large) == 2 and {t.data_ptr() for t in large} == {a.data_ptr(), b.data_ptr()}
    assert cm.dtype == torch.float32
    weights = torch.rand(8, generator=generator).to(device)
    grad_a, grad_b = torch.autograd.grad(cm, (a, b), weights)
    a32, b32 = (t.detach().float().contiguous().requires_grad_(True) for t in (a, b))
    norm = torch.linalg.vector_norm
    reference = norm((a32 - b32).flatten(1), dim=1) / norm(a32.flatten(1), dim=1)
    ref_a, ref_b = torch.autograd.grad(reference, (a32, b32), weights)
    assert torch.allclose(cm, reference.detach(), rtol=1e-5)
    assert grad_a.dtype == torch.bfloat16 and grad_b.dtype == torch.bfloat16
    assert torch.allclose(grad_a.float(), ref_a, rtol=2e-2, atol=1e-4)
    assert torch.allclose(grad_b.float(), ref_b, rtol=2e-2, atol=1e-4)


@pytest.mark.gpu
def test_cuda_peak_memory_of_the_lsa_term_is_its_inputs():
    """On CUDA: computing the LSA term with its graph allocates no feature-map-sized tensors."""
    a = torch.randn(64, 64, 32, 32, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    b = (a + 0.01).requires_grad_(True)
    a.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    cm = relative_error(a, b)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before
    peak = torch.cuda.max_memory_allocated() - before
    assert kept < 64 * 1024  # the (N,) results and norms only
    assert peak <= 2.5 * a.numel() * 4  # float32 temporaries of the forward, freed at once
    cm.sum().backward()
    assert a.grad is not None and b.grad is not None
