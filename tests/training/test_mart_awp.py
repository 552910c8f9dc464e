"""MART (loss, module) and Adversarial Weight Perturbation (step, restore, warmup, checkpoints, bf16)."""

from __future__ import annotations

import copy
import functools
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsa_train.attacks import PGD, MARTAttack, NoAttack, TRADESAttack
from lsa_train.training import AdversarialWeightPerturbation, LayerwiseRegularizer, LSARegularizedModule, mart_loss

pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`:UserWarning")

CLEAN = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]]
ADV = [[1.0, 0.5, -1.0], [0.0, 2.0, 0.5], [1.0, 0.2, 0.3]]
LABELS = [0, 1, 2]


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _mart_by_hand(clean: list[list[float]], adv: list[list[float]], labels: list[int], beta: float) -> float:
    total = 0.0
    for zc, za, y in zip(clean, adv, labels):
        pc, pa = _softmax(zc), _softmax(za)
        top_other = max(p for k, p in enumerate(pa) if k != y)
        boosted_ce = -math.log(pa[y]) - math.log(1.0 - top_other)
        kl = sum(c * (math.log(c) - math.log(a)) for c, a in zip(pc, pa))
        total += boosted_ce + beta * kl * (1.0 - pc[y])
    return total / len(labels)


# -- MART loss -------------------------------------------------------------------------------------
def test_mart_loss_matches_a_hand_computed_three_sample_batch():
    clean, adv, y = torch.tensor(CLEAN), torch.tensor(ADV), torch.tensor(LABELS)
    for beta in (6.0, 1.5):
        assert mart_loss(clean, adv, y, beta).item() == pytest.approx(_mart_by_hand(CLEAN, ADV, LABELS, beta), rel=1e-6)


def test_mart_gradient_reaches_both_branches():
    clean = torch.tensor(CLEAN, requires_grad=True)
    adv = torch.tensor(ADV, requires_grad=True)
    mart_loss(clean, adv, torch.tensor(LABELS), 6.0).backward()
    assert clean.grad is not None and adv.grad is not None
    assert (clean.grad.abs().sum(1) > 0).all() and (adv.grad.abs().sum(1) > 0).all()


def test_mart_beta_zero_is_the_boosted_ce_alone():
    clean = torch.tensor(CLEAN, requires_grad=True)
    adv, y = torch.tensor(ADV), torch.tensor(LABELS)
    loss = mart_loss(clean, adv, y, beta=0.0)
    p_adv = adv.softmax(1)
    top_other = p_adv.scatter(1, y[:, None], 0.0).amax(1)
    boosted = (F.cross_entropy(adv, y, reduction="none") - torch.log(1 - top_other)).mean()
    assert loss.item() == pytest.approx(boosted.item(), rel=1e-6)
    loss.backward()
    assert torch.equal(clean.grad, torch.zeros_like(clean))  # beta 0: the clean branch drops out


def test_mart_loss_is_finite_when_a_wrong_class_takes_all_the_mass():
    adv = torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    clean = torch.tensor([[-80.0, 80.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    loss = mart_loss(clean, adv, torch.tensor([1, 0]), 6.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(adv.grad).all() and torch.isfinite(clean.grad).all()


def test_mart_module_step_equals_the_loss_and_the_lsa_term_reuses_its_clean_forward(mlp_a, moons):
    x, y = moons[0][:8], moons[1][:8]
    attack = MARTAttack(eps=0.1, steps=2, seed=0)
    module = LSARegularizedModule(mlp_a, attack=attack, base_loss="mart", mart_beta=3.0)
    loss = module.training_step((x, y), 0)
    x_adv = attack(mlp_a, x, y)
    assert loss.item() == pytest.approx(mart_loss(mlp_a(x), mlp_a(x_adv), y, 3.0).item(), rel=1e-6)

    calls = []
    mlp_a.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    with_lr = LSARegularizedModule(
        mlp_a, attack=attack, base_loss="mart", regularizer=LayerwiseRegularizer(1.0), mvl=[0]
    )
    with_lr.ensure_probes(x)
    calls.clear()
    loss_lr = with_lr.training_step((x, y), 0)
    assert len(calls) == 2 + 2  # attack: 2 steps; outer step: one clean and one adversarial forward
    assert loss_lr.item() > loss.item() - 1e-6  # the LSA term adds a non-negative amount


# -- AWP ---------------------------------------------------------------------------------------
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ELU(), nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 2))


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(1))
    return x, (x[:, 0] > x[:, 1]).long()


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", deterministic=True,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def _sgd(lr: float = 0.1) -> functools.partial:
    return functools.partial(torch.optim.SGD, lr=lr)


def test_awp_step_equals_a_step_with_the_gradient_taken_at_the_perturbed_weights(tmp_path):
    net, (x, y), gamma, lr = _net(), _batch(), 0.05, 0.1
    attack = PGD(eps=0.1, steps=2, random_start=False)
    start = copy.deepcopy(net.state_dict())
    # by hand: x_adv at w0; g = grad of CE(x_adv) at w0; w_l += gamma * ||w_l|| * g_l / ||g_l|| for the
    # 2-D weights only; G = grad at that point; w1 = w0 - lr * G
    ref = _net()
    x_adv = attack(ref, x, y)
    grads = torch.autograd.grad(F.cross_entropy(ref(x_adv), y), list(ref.parameters()))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            if p.ndim > 1:
                p.add_(gamma * p.norm() * g / g.norm())
    at_perturbed = torch.autograd.grad(F.cross_entropy(ref(x_adv), y), list(ref.parameters()))
    expected = {name: start[name] - lr * g for (name, _), g in zip(ref.named_parameters(), at_perturbed)}

    # plain AT + AWP: the default LSA term (kept on by its MVL refresh) is not part of the hand computation
    module = LSARegularizedModule(net, attack=attack, optimizer=_sgd(lr), awp={"gamma": gamma}, regularizer=None)
    _trainer(tmp_path, max_steps=1).fit(module, DataLoader(TensorDataset(x, y), batch_size=len(x)))
    for name, p in net.named_parameters():
        assert torch.allclose(p.detach(), expected[name], atol=1e-6), name
    plain = _net()
    plain_module = LSARegularizedModule(plain, attack=attack, optimizer=_sgd(lr), regularizer=None)
    _trainer(tmp_path, max_steps=1).fit(plain_module, DataLoader(TensorDataset(x, y), batch_size=len(x)))
    assert not torch.allclose(plain[0].weight, net[0].weight, atol=1e-5)  # AWP changed the step


def test_awp_restores_the_weights_bit_exactly_when_the_step_is_skipped():
    net, (x, y) = _net(), _batch()
    start = copy.deepcopy(net.state_dict())
    module = LSARegularizedModule(net, attack=PGD(eps=0.1, steps=2), awp=AdversarialWeightPerturbation(0.1))
    loss = module.training_step((x, y), 0)
    assert not torch.equal(net[0].weight, start["0.weight"])  # perturbed during forward and backward
    assert torch.equal(net[0].bias, start["0.bias"])  # biases are not perturbed
    loss.backward()
    module.on_after_backward()  # what Lightning calls right after the backward; no optimizer step follows
    for name, value in net.state_dict().items():
        assert torch.equal(value, start[name]), name

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    module._outer_step = broken  # the step fails after the perturbation: the weights still come back
    with pytest.raises(RuntimeError, match="boom"):
        module.training_step((x, y), 0)
    for name, value in net.state_dict().items():
        assert torch.equal(value, start[name]), name


def _fit_weights(tmp_path, awp, epochs: int = 2, model: nn.Module | None = None, **module_kwargs):
    L.seed_everything(3, verbose=False)
    net = model if model is not None else _net()
    x, y = _batch(64)
    module = LSARegularizedModule(net, attack=PGD(eps=0.1, steps=2), awp=awp, **module_kwargs)
    _trainer(tmp_path, max_epochs=epochs).fit(module, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
    return module, [p.detach().clone() for p in net.parameters()]


def test_awp_gamma_zero_and_warmup_equal_plain_training_bit_for_bit(tmp_path):
    _, plain = _fit_weights(tmp_path, None)
    off, gamma_zero = _fit_weights(tmp_path, {"gamma": 0.0, "warmup": 0})
    assert off.awp is None
    _, warming = _fit_weights(tmp_path, AdversarialWeightPerturbation(0.05, warmup=2))
    _, on = _fit_weights(tmp_path, AdversarialWeightPerturbation(0.05, warmup=1))
    for a, b, c in zip(plain, gamma_zero, warming):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert any(not torch.equal(a, d) for a, d in zip(plain, on))  # AWP from epoch 1 on changes training


def test_awp_updates_batchnorm_statistics_once_per_step_and_keeps_the_proxy_out_of_the_state(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    # plain AT + AWP (the LSA term's clean forward would update the statistics a second time per step)
    module, _ = _fit_weights(tmp_path, {"gamma": 0.02}, epochs=1, model=net, regularizer=None)
    assert int(net[1].num_batches_tracked) == 4  # 64 samples / 16: the proxy's forwards do not count
    assert all(key.startswith("model.") for key in module.state_dict())
    assert module.awp is not None and module.awp._proxy is not None


def test_awp_proxy_copies_each_layers_mode_so_a_frozen_batchnorm_stays_frozen():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1.0, 1.0)
        net[1].running_var.uniform_(0.5, 2.0)
    net.train()
    net[1].eval()  # a frozen BatchNorm (running statistics) while the rest trains
    net[3].eval()  # and a Dropout switched off
    awp = AdversarialWeightPerturbation(0.05)
    proxy = awp.proxy_for(net)
    assert [m.training for m in proxy.modules()] == [m.training for m in net.modules()]
    net.train()  # the next step's modes are copied anew
    assert [m.training for m in awp.proxy_for(net).modules()] == [True] * len(list(net.modules()))
    net[1].eval()
    net[3].eval()

    x, y = _batch()
    diffs = awp.perturbation(net, lambda m: F.cross_entropy(m(x), y))
    # by hand, on the model itself in its own modes: the perturbation's gradient comes from that function
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), [net[0].weight, net[4].weight])
    for name, g, w in (("0.weight", grads[0], net[0].weight), ("4.weight", grads[1], net[4].weight)):
        assert torch.allclose(diffs[name], 0.05 * w.detach().norm() * g / g.norm(), atol=1e-6), name


def test_awp_with_trades_mart_and_the_lsa_term_under_bf16(tmp_path):
    for attack, loss in ((TRADESAttack(eps=0.1, steps=2), "trades"), (MARTAttack(eps=0.1, steps=2), "mart")):
        L.seed_everything(0, verbose=False)
        net, (x, y) = _net(), _batch(32)
        module = LSARegularizedModule(
            net, attack=attack, base_loss=loss, regularizer=LayerwiseRegularizer(0.5), mvl=[1],
            awp={"gamma": 5e-3},
        )
        trainer = _trainer(tmp_path, max_epochs=1, precision="bf16-mixed")
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
        assert torch.isfinite(trainer.callback_metrics["train/loss"]) and module._awp_backup is None
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())


def test_awp_settings_travel_in_checkpoints_and_resume(tmp_path):
    x, y = _batch(32)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    module = LSARegularizedModule(_net(), attack=PGD(eps=0.1, steps=2), awp={"gamma": 0.01, "warmup": 1})
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(module, loader)
    path = tmp_path / "awp.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved["lsa_train"]["awp"] == {"gamma": 0.01, "warmup": 1}
    assert saved["hyper_parameters"]["awp"] == {"gamma": 0.01, "warmup": 1}
    loaded = LSARegularizedModule.load_from_checkpoint(path, model=_net(), attack=PGD(eps=0.1, steps=2))
    assert loaded.awp is not None and (loaded.awp.gamma, loaded.awp.warmup) == (0.01, 1)
    resumed = LSARegularizedModule(_net(), attack=PGD(eps=0.1, steps=2), awp={"gamma": 0.01, "warmup": 1})
    trainer2 = _trainer(tmp_path, max_epochs=2)
    trainer2.fit(resumed, loader, ckpt_path=path)
    assert trainer2.current_epoch == 2 and resumed._awp_backup is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"awp": {"gamma": -1.0}}, r"awp gamma must be a finite number >= 0 \(0 = off\), got -1.0"),
        ({"awp": {"gamma": float("nan")}}, r"awp gamma must be a finite number >= 0"),
        ({"awp": {"gamma": 0.01, "warmup": -2}}, r"awp warmup must be an integer number of epochs >= 0, got -2"),
        ({"awp": {"gama": 0.01}}, r"unknown awp keys \['gama'\]; valid keys are \['gamma', 'warmup'\]"),
        ({"awp": 0.01}, r"awp must be an AdversarialWeightPerturbation, a dict"),
        ({"awp": {"gamma": 0.01}, "attack": NoAttack(eps=0.0), "base_loss": "normal"}, r"awp perturbs the weights"),
        ({"mart_beta": -1.0}, r"mart_beta must be a finite number >= 0, got -1.0"),
        ({"base_loss": "mart", "attack": None}, r"base_loss='mart' needs an attack"),
    ],
)
def test_bad_mart_and_awp_arguments(kwargs, error):
    kwargs = {"attack": PGD(eps=0.1), **kwargs}
    with pytest.raises(ValueError, match=error):
        LSARegularizedModule(_net(), **kwargs)
