"""``clip``: ``"project"`` (default, unchanged) vs the weakened ``"forward"`` ablation of PGD, MART and TRADES."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsa_train.attacks import PGD, PGDL2, MARTAttack, TRADESAttack
from lsa_train.attacks.losses import kl_to_clean

EPS, ALPHA, STEPS = 0.1, 0.03, 4


def _box(x: Tensor, images: Tensor) -> Tensor:
    """The old projection, written out: onto the Linf ball around ``images``, then into [0, 1]."""
    return torch.min(torch.max(x, images - EPS), images + EPS).clamp(0, 1)


def _reference(kind: str, model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> Tensor:
    """The loops of PGD, MART and TRADES as they were before ``clip`` existed (projection every step)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean_log_probs = F.log_softmax(model(images), dim=1)
        if kind == "pgd":
            x = _box(images + torch.empty_like(images).uniform_(-EPS, EPS, generator=generator), images)
        else:
            x = _box(images + 0.001 * torch.empty_like(images).normal_(generator=generator), images)
    for _ in range(STEPS):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        loss = kl_to_clean(logits, clean_log_probs) if kind == "trades" else F.cross_entropy(logits, labels)
        (grad,) = torch.autograd.grad(loss, [x])
        with torch.no_grad():
            x = _box(x + ALPHA * grad.sign(), images)
    return x.detach()


def _attack(kind: str, seed: int, **kwargs) -> PGD | MARTAttack | TRADESAttack:
    cls = {"pgd": PGD, "mart": MARTAttack, "trades": TRADESAttack}[kind]
    return cls(EPS, alpha=ALPHA, steps=STEPS, seed=seed, **kwargs)


@pytest.mark.parametrize("kind", ["pgd", "mart", "trades"])
def test_default_is_the_old_projection_bit_for_bit(kind, make_model, make_batch):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn", n=16)
    images[:, :, :3] = 0.0  # a blank band, where the two clip modes part
    expected = _reference(kind, model, images, labels, seed=3)
    default = _attack(kind, 3)
    assert default.clip == "project" and "clip=" not in repr(default)
    assert torch.equal(default(model, images, labels), expected)
    assert torch.equal(_attack(kind, 3, clip="project")(model, images, labels), expected)
    forward = _attack(kind, 3, clip="forward")
    assert "clip='forward'" in repr(forward)
    assert not torch.equal(forward(model, images, labels), expected)  # the option changes something


class RisingLoss(nn.Module):
    """Logits ``(0, sum(x))``: with label 0 the cross-entropy grows with every pixel (positive gradient
    everywhere), so an attack that can move a pixel pushes it up to the radius. Records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.detach().clone())
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


@pytest.mark.parametrize("kind", ["pgd", "mart"])
def test_forward_clip_freezes_pixels_pushed_below_the_range(kind):
    images = torch.zeros(4, 1, 8, 8)  # an all-blank background
    labels = torch.zeros(4, dtype=torch.int64)
    model = RisingLoss()
    x_adv = _attack(kind, 0, clip="forward")(model, images, labels)
    assert len(model.inputs) == STEPS
    frozen = model.inputs[0] == 0  # the start put these below 0: the model saw 0 and their gradient is 0
    assert 0.3 < frozen.float().mean().item() < 0.7  # about half the background
    for seen in model.inputs:  # they never move, so the model input there never changes
        assert torch.equal(seen[frozen], torch.zeros_like(seen[frozen]))
    assert torch.equal(x_adv[frozen], torch.zeros_like(x_adv[frozen]))
    torch.testing.assert_close(x_adv[~frozen], torch.full_like(x_adv[~frozen], EPS))  # the others rise to eps
    # the default projection keeps every pixel in [0, 1], so each has a gradient and rises to eps
    model.inputs.clear()
    projected = _attack(kind, 0)(model, images, labels)
    torch.testing.assert_close(projected, torch.full_like(projected, EPS))


def test_forward_clip_gradient_is_zero_outside_the_range():
    x = torch.tensor([[-0.05, 0.0, 0.5, 1.0, 1.05]])
    model = nn.Linear(5, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0] * 5, [1.0] * 5]))
    labels = torch.zeros(1, dtype=torch.int64)
    grad_forward, _ = PGD(EPS, clip="forward")._loss_and_grad(model, x, labels)
    grad_project, _ = PGD(EPS)._loss_and_grad(model, x, labels)
    # outside the range, and exactly on its bounds (torch's clamp), no gradient; inside, the model's
    assert grad_forward[0, 2] > 0 and torch.equal(grad_forward[0, [0, 1, 3, 4]], torch.zeros(4))
    assert (grad_project > 0).all()  # the default passes the iterate as it is


def test_forward_clip_trades_keeps_frozen_pixels_blank():
    images = torch.zeros(4, 1, 8, 8)
    model = RisingLoss()
    x_adv = _attack("trades", 0, clip="forward")(model, images, None)
    adversarial = model.inputs[1:]  # the first forward is the clean prediction
    frozen = adversarial[0] == 0
    assert frozen.any()
    for seen in adversarial:
        assert torch.equal(seen[frozen], torch.zeros_like(seen[frozen]))
    assert torch.equal(x_adv[frozen], torch.zeros_like(x_adv[frozen]))


@pytest.mark.parametrize(
    "build",
    [
        lambda: PGD(EPS, alpha=0.05, steps=5, clip="forward", seed=1),
        lambda: PGD(EPS, alpha=0.05, steps=5, restarts=2, clip="forward", seed=1),
        lambda: PGDL2(0.5, steps=5, clip="forward", seed=1),
        lambda: MARTAttack(EPS, alpha=0.05, steps=5, clip="forward", seed=1),
        lambda: TRADESAttack(EPS, alpha=0.05, steps=5, clip="forward", seed=1),
    ],
)
def test_forward_clip_output_is_a_valid_input_in_the_ball(build, make_model, make_batch):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn", n=32)  # includes exact 0s and 1s
    attack = build()
    x_adv = attack(model, images, labels)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - images).flatten(1)
    if attack.norm == "l2":
        assert (delta.norm(dim=1) <= attack.eps + 1e-6).all()
    else:
        assert delta.abs().max() <= attack.eps + 1e-6
    assert not torch.equal(x_adv, images)


def test_clip_rejects_unknown_modes():
    with pytest.raises(ValueError, match=r"unknown clip 'box'; choose one of \['project', 'forward'\]"):
        PGD(EPS, clip="box")
    with pytest.raises(ValueError, match="unknown clip"):
        MARTAttack(EPS, clip="inside")
