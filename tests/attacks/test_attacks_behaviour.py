"""What each attack computes: closed forms, strength on a trained model, norms, restarts, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsa_train.attacks import (
    APGD,
    FGSM,
    FGSMRS,
    PGD,
    PGDL2,
    MARTAttack,
    TRADESAttack,
    batchnorm_buffers_snapshot,
    buffers_snapshot,
    create_attack,
    preserved_model_state,
    restore_buffers,
)
from lsa_train.attacks.losses import dlr_loss

EPS = 0.1  # on the [0, 1]-scaled moons: robust accuracy about 65% under PGD-10


def fgsm_closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), [x])
    return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


# -- FGSM / PGD ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fgsm_equals_closed_form(kind, make_model, make_batch):
    model = make_model(kind).eval()
    images, labels = make_batch(kind, n=32)
    expected = fgsm_closed_form(model, images, labels, 0.1)
    assert torch.equal(FGSM(eps=0.1)(model, images, labels), expected)


def test_fgsm_closed_form_on_trained_model(moons):
    model, x, y = moons
    assert torch.equal(FGSM(EPS)(model, x, y), fgsm_closed_form(model, x, y, EPS))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_pgd_one_step_from_x_with_alpha_eps_is_fgsm(kind, make_model, make_batch):
    model = make_model(kind).eval()
    images, labels = make_batch(kind, n=32)
    pgd = PGD(eps=0.1, alpha=0.1, steps=1, random_start=False)
    assert torch.equal(pgd(model, images, labels), FGSM(eps=0.1)(model, images, labels))


def test_pgd_raises_loss_and_lowers_accuracy(moons, accuracy):
    model, x, y = moons
    clean_acc = accuracy(model, x, y)
    assert clean_acc > 0.95
    x_adv = PGD(EPS, steps=10, seed=0)(model, x, y)
    assert ce(model, x_adv, y) > ce(model, x, y) + 0.1
    assert accuracy(model, x_adv, y) < clean_acc - 0.05
    # more steps and a larger ball are stronger
    assert accuracy(model, PGD(2 * EPS, steps=10, seed=0)(model, x, y), y) < accuracy(model, x_adv, y)


def test_pgd_stronger_than_fgsm_and_fgsm_rs(moons, accuracy):
    model, x, y = moons
    pgd_acc = accuracy(model, PGD(EPS, steps=10, seed=0)(model, x, y), y)
    assert pgd_acc <= accuracy(model, FGSM(EPS)(model, x, y), y) + 0.005
    assert pgd_acc <= accuracy(model, FGSMRS(EPS, seed=0)(model, x, y), y) + 0.005


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_at_least_as_strong_as_pgd(norm, moons, accuracy):
    model, x, y = moons
    eps = EPS if norm == "linf" else 1.4 * EPS
    pgd_acc = accuracy(model, PGD(eps, steps=10, norm=norm, seed=0)(model, x, y), y)
    apgd_acc = accuracy(model, APGD(eps, steps=10, norm=norm, seed=0)(model, x, y), y)
    assert apgd_acc <= pgd_acc + 0.005
    assert apgd_acc < accuracy(model, x, y) - 0.05


def test_l2_pgd_respects_the_l2_ball_per_sample(make_model, make_batch):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn", n=32)
    images = torch.full_like(images, 0.5)  # far from the box: the L2 ball is the binding constraint
    eps = 0.5
    x_adv = PGDL2(eps, alpha=0.3, steps=5, seed=0)(model, images, labels)
    norms = (x_adv - images).flatten(1).norm(dim=1)
    assert (norms <= eps * (1 + 1e-5)).all()
    assert (norms >= 0.9 * eps).all(), "large steps should reach the boundary"
    # the per-coordinate change exceeds what an Linf ball of the same radius / sqrt(D) would allow
    assert (x_adv - images).abs().max() > eps / 8


def test_pgd_l2_is_pgd_with_l2_norm(make_model, make_batch):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")
    atk = create_attack("pgd_l2", eps=0.5)
    assert isinstance(atk, PGD) and atk.norm == "l2" and atk.name == "pgd_l2"
    expected = PGD(0.5, norm="l2", seed=3)(model, images, labels)
    assert torch.equal(PGDL2(0.5, seed=3)(model, images, labels), expected)


def test_zero_gradient_l2_step_is_safe():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(model[1].weight)  # the loss does not depend on the input: zero gradient
    images, labels = torch.full((5, 4), 0.5), torch.zeros(5, dtype=torch.int64)
    for atk in (PGDL2(0.3, random_start=False), APGD(0.3, norm="l2")):
        x_adv = atk(model, images, labels)
        assert torch.isfinite(x_adv).all()


def test_pgd_restarts_keep_every_fooled_sample(moons):
    model, x, y = moons
    with torch.no_grad():
        one = PGD(EPS, steps=5, seed=4)(model, x, y)
        three = PGD(EPS, steps=5, restarts=3, seed=4)(model, x, y)  # its first restart equals `one`
        fooled_one = model(one).argmax(1) != y
        fooled_three = model(three).argmax(1) != y
    assert (fooled_three | ~fooled_one).all()
    assert fooled_three.sum() >= fooled_one.sum()
    assert PGD(EPS, steps=5, restarts=3).num_forward_backward == 15


def test_eps_zero_returns_input(make_model, make_batch, build_attack):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")
    for name in ("fgsm", "pgd", "pgd_l2", "apgd", "trades", "mart"):
        assert torch.equal(build_attack(name, eps=0.0)(model, images, labels), images), name


def test_custom_clip_range(make_model, make_batch):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")
    images = images * 2 - 1  # in [-1, 1]
    x_adv = PGD(0.2, steps=3, clip_min=-1.0, clip_max=1.0, seed=0)(model, images, labels)
    assert x_adv.min() >= -1 and x_adv.max() <= 1 and x_adv.min() < 0
    assert (x_adv - images).abs().max() <= 0.2 + 1e-6


def test_custom_loss_fn_is_ascended(make_model, make_batch):
    model = make_model("mlp").eval()
    images, _ = make_batch("mlp", n=64)
    target = torch.zeros(64, dtype=torch.int64)

    def targeted(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(logits, labels, reduction="none")  # per-sample values are summed

    x_adv = PGD(0.3, steps=10, loss_fn=targeted, seed=0)(model, images, target)
    assert ce(model, x_adv, target) < ce(model, images, target)
    assert "loss_fn='targeted'" in repr(PGD(0.3, loss_fn=targeted))


def test_fgsm_rs_default_alpha():
    assert FGSMRS(0.1).alpha == pytest.approx(0.125)
    assert FGSMRS(0.1, alpha=0.05).alpha == 0.05
    assert PGD(0.1).alpha == pytest.approx(0.025)
    assert TRADESAttack(0.1).alpha == pytest.approx(0.025)


@pytest.mark.parametrize(("steps", "alpha"), [(1, 0.25), (2, 0.125), (5, 0.05), (10, 0.025), (20, 0.025), (100, 0.025)])
def test_pgd_default_step_scales_with_few_steps(steps, alpha):
    # max(eps / 4, 2.5 * eps / steps): eps / 4 from 10 steps on, so those results are unchanged
    assert PGD(0.1, steps=steps).alpha == pytest.approx(alpha)
    assert PGDL2(0.1, steps=steps).alpha == pytest.approx(alpha)
    assert TRADESAttack(0.1, steps=steps).alpha == pytest.approx(alpha)
    assert MARTAttack(0.1, steps=steps).alpha == pytest.approx(alpha)
    assert PGD(0.1, alpha=0.01, steps=steps).alpha == 0.01


def test_pgd_two_steps_reach_the_radius():
    # A linear model: the gradient sign is constant, so every coordinate moves by alpha per step
    # until the projection; with the old eps / 4 default two steps stopped at eps / 2.
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x = 0.25 + 0.5 * torch.rand(16, 6)  # eps away from the box's faces: no clipping
    y = torch.randint(0, 3, (16,))
    for attack in (PGD(0.1, steps=2, random_start=False), PGD(0.1, steps=2, seed=0)):
        delta = (attack(model, x, y) - x).abs()
        assert delta.max() <= 0.1 + 1e-6
        assert delta.amax(dim=1).min() >= 0.1 - 1e-6


# -- APGD ----------------------------------------------------------------------------------
def test_apgd_dlr_loss(make_model, make_batch):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn", n=32)
    x_adv = APGD(0.1, steps=5, loss="dlr", seed=0)(model, images, labels)
    with torch.no_grad():
        assert dlr_loss(model(x_adv), labels).mean() > dlr_loss(model(images), labels).mean()


def test_dlr_loss_values():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 4.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2])
    # sample 0: true is the top logit: -(3 - 1) / (3 - 0); sample 1: -(2 - 4) / (4 - 1)
    assert torch.allclose(dlr_loss(logits, labels), torch.tensor([-2 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.tensor([0, 1]))


def test_apgd_loss_fn_must_be_per_sample(make_model, make_batch):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")

    def per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")

    expected = APGD(0.1, steps=3, seed=0)(model, images, labels)
    assert torch.equal(APGD(0.1, steps=3, seed=0, loss_fn=per_sample)(model, images, labels), expected)
    with pytest.raises(ValueError, match="per-sample"):
        APGD(0.1, steps=3, loss_fn=F.cross_entropy)(model, images, labels)


def test_apgd_restarts_and_cost(moons, accuracy):
    model, x, y = moons
    one = accuracy(model, APGD(EPS, steps=5, seed=0)(model, x, y), y)
    three = accuracy(model, APGD(EPS, steps=5, restarts=3, seed=0)(model, x, y), y)
    assert three <= one
    assert APGD(EPS, steps=5, restarts=3).num_forward_backward == 15


# -- TRADES --------------------------------------------------------------------------------
def test_trades_increases_kl_and_ignores_labels(make_model, make_batch):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn", n=32)
    atk = TRADESAttack(0.1, steps=5, seed=0)
    x_adv = atk(model, images, labels)
    assert torch.equal(atk(model, images, None), x_adv)
    assert torch.equal(atk(model, images, torch.zeros_like(labels)), x_adv)
    with torch.no_grad():
        kl = F.kl_div(
            F.log_softmax(model(x_adv), 1), F.log_softmax(model(images), 1), reduction="sum", log_target=True
        )
    assert kl > 1e-3


# -- MART ----------------------------------------------------------------------------------
def test_mart_is_pgd_on_ce_from_the_reference_gaussian_start(make_model, make_batch):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn", n=32)
    eps, alpha = 0.1, 0.03
    x_adv = MARTAttack(eps, alpha=alpha, steps=4, seed=5)(model, images, labels)
    # the reference loop, written out: x + 0.001 * N(0, 1), then signed CE ascent with projection
    noise = torch.empty_like(images).normal_(generator=torch.Generator().manual_seed(5))
    x = torch.min(torch.max(images + 0.001 * noise, images - eps), images + eps).clamp(0, 1)
    for _ in range(4):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels), [x])
        x = torch.min(torch.max(x + alpha * grad.sign(), images - eps), images + eps).clamp(0, 1)
    assert torch.allclose(x_adv, x.detach(), atol=1e-6)
    assert ce(model, x_adv, labels) > ce(model, images, labels)
    assert MARTAttack(0.1).alpha == pytest.approx(0.025) and MARTAttack(0.1, steps=7).num_forward_backward == 7


# -- model-state helpers ---------------------------------------------------------------------
def test_preserved_model_state_restores_on_error(make_model, make_batch):
    model = make_model("cnn").eval()
    images, _ = make_batch("cnn")
    buffers = {key: value.clone() for key, value in model.named_buffers()}
    with pytest.raises(RuntimeError, match="boom"), preserved_model_state(model, "train"):
        assert model.training
        model(images)
        raise RuntimeError("boom")
    assert not any(m.training for m in model.modules())
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key])
    message = r"unknown craft_mode 'test'; choose one of \['eval', 'train', 'keep'\]"
    with pytest.raises(ValueError, match=message), preserved_model_state(model, "test"):
        pass


def test_buffer_snapshots(make_model, make_batch):
    model = make_model("cnn").train()
    model.register_buffer("counter", torch.zeros(1))
    images, _ = make_batch("cnn")
    bn_only = batchnorm_buffers_snapshot(model)
    assert {name for _, name, _ in bn_only} == {"running_mean", "running_var", "num_batches_tracked"}
    everything = buffers_snapshot(model, batchnorm_only=False)
    assert len(everything) == len(bn_only) + 1
    saved = {key: value.clone() for key, value in model.named_buffers()}
    with torch.no_grad():
        model(images)
        model.counter += 1
    restore_buffers(everything)
    for key, value in model.named_buffers():
        assert torch.equal(value, saved[key])


class CountingModel(nn.Module):
    """Counts its training-mode forwards in a buffer, like spectral norm's power iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 3)
        self.register_buffer("train_calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_calls += 1
        return self.linear(x)


@pytest.mark.parametrize("craft_mode", ["train", "keep"])
def test_train_crafting_restores_every_buffer(craft_mode, make_batch):
    model = CountingModel().train()
    images, labels = make_batch("mlp")
    PGD(0.1, steps=3, craft_mode=craft_mode)(model, images, labels)
    assert model.train_calls.item() == 0
    model(images)
    assert model.train_calls.item() == 1


def test_keep_better_merges_restarts_per_sample():
    x_old, x_new = torch.zeros(4, 2), torch.ones(4, 2)
    old = (x_old, torch.tensor([1.0, 1.0, 5.0, 1.0]), torch.tensor([False, False, False, True]))
    new = (x_new, torch.tensor([2.0, 0.5, 0.5, 9.0]), torch.tensor([False, True, False, True]))
    x, loss, fooled = PGD._keep_better(old, new)
    # 0: higher loss wins; 1: a fooling candidate wins despite lower loss; 2: keeps the higher loss;
    # 3: keeps the first fooling one even if the new one has a higher loss
    assert x[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert loss.tolist() == [2.0, 0.5, 5.0, 1.0]
    assert fooled.tolist() == [False, True, False, True]


@pytest.mark.parametrize("name", ["fgsm", "fgsm_rs", "pgd", "pgd_l2", "apgd"])
def test_loss_fn_gets_float32_logits_under_autocast(name, make_model, make_batch, build_attack):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn")
    dtypes: set[torch.dtype] = set()

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtypes.add(logits.dtype)
        assert not torch.is_autocast_enabled("cpu")
        return F.cross_entropy(logits, labels, reduction="none")

    with torch.autocast("cpu", dtype=torch.bfloat16):
        build_attack(name, loss_fn=loss_fn)(model, images, labels)
    assert dtypes == {torch.float32}
