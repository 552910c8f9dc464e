"""The call contract every registered attack must honour (output, model state, RNG, grad modes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsa_train.attacks import CRAFT_MODES, Attack, list_attacks

ATTACK_NAMES = list_attacks()
START_MODES = ("train", "eval", "mixed")


def assert_valid(x_adv: torch.Tensor, images: torch.Tensor, atk: Attack) -> None:
    """Shape/dtype/device preserved, detached, in the valid range and in the eps ball."""
    assert x_adv.shape == images.shape
    assert x_adv.dtype == images.dtype
    assert x_adv.device == images.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.min() >= atk.clip_min and x_adv.max() <= atk.clip_max
    delta = (x_adv - images).reshape(len(images), -1)
    if atk.norm is None:
        assert torch.equal(x_adv, images)
    elif atk.norm == "linf":
        assert delta.abs().max() <= atk.eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= atk.eps * (1 + 1e-5) + 1e-7).all()


def set_start_mode(model: nn.Module, start: str) -> None:
    model.train(start != "eval")
    if start == "mixed":  # root in train, the BatchNorm layers frozen in eval
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_output_in_ball_and_range(name, kind, make_model, make_batch, build_attack):
    model = make_model(kind).eval()
    images, labels = make_batch(kind)
    original = images.clone()
    atk = build_attack(name)
    x_adv = atk(model, images, labels)
    assert_valid(x_adv, images, atk)
    assert torch.equal(images, original), "the input was modified in place"
    if name != "none":
        assert not torch.equal(x_adv, images)
        assert x_adv.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("start", START_MODES)
@pytest.mark.parametrize("craft_mode", CRAFT_MODES)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_mode_flags_restored_and_crafting_mode_used(
    name, craft_mode, start, make_model, make_batch, build_attack
):
    model = make_model("cnn")
    set_start_mode(model, start)
    flags = [m.training for m in model.modules()]
    seen: list[bool] = []
    dropout = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    dropout.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    images, labels = make_batch("cnn")
    build_attack(name, craft_mode=craft_mode)(model, images, labels)
    assert [m.training for m in model.modules()] == flags
    if name == "none":
        assert seen == []
        return
    expected = {"eval": False, "train": True, "keep": dropout.training}[craft_mode]
    assert seen and all(flag == expected for flag in seen)


@pytest.mark.parametrize("craft_mode", CRAFT_MODES)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_parameter_grads_unchanged(name, craft_mode, make_model, make_batch, build_attack):
    model = make_model("cnn").train()
    params = list(model.parameters())
    for index, param in enumerate(params):  # half the parameters have a grad, half None
        param.grad = torch.randn_like(param) if index % 2 == 0 else None
    before = [None if p.grad is None else p.grad.clone() for p in params]
    images, labels = make_batch("cnn")
    build_attack(name, craft_mode=craft_mode)(model, images, labels)
    for param, grad in zip(params, before):
        if grad is None:
            assert param.grad is None
        else:
            assert torch.equal(param.grad, grad)


@pytest.mark.parametrize("craft_mode", CRAFT_MODES)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_batchnorm_buffers_unchanged(name, craft_mode, make_model, make_batch, build_attack):
    model = make_model("cnn").train()  # train mode: a leak would update the running stats
    buffers = {key: value.clone() for key, value in model.named_buffers()}
    assert any(key.endswith("num_batches_tracked") for key in buffers)
    images, labels = make_batch("cnn")
    build_attack(name, craft_mode=craft_mode)(model, images, labels)
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_seeded_reproducibility(name, make_model, make_batch, build_attack):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")
    first = build_attack(name, seed=1)(model, images, labels)
    atk = build_attack(name, seed=1)
    rng_state = torch.random.get_rng_state()
    assert torch.equal(atk(model, images, labels), first)
    assert torch.equal(atk(model, images, labels), first), "a second call with the same seed differs"
    assert torch.equal(torch.random.get_rng_state(), rng_state), "a seeded attack consumed the global RNG"
    other = build_attack(name, seed=2)(model, images, labels)
    if build_attack(name).is_random:
        assert not torch.equal(other, first)
    else:
        assert torch.equal(other, first)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_global_rng_used_without_seed(name, make_model, make_batch, build_attack):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")
    atk = build_attack(name)
    torch.manual_seed(123)
    first = atk(model, images, labels)
    torch.manual_seed(123)
    assert torch.equal(atk(model, images, labels), first)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_works_inside_no_grad(name, make_model, make_batch, build_attack):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn")
    atk = build_attack(name, seed=0)
    expected = atk(model, images, labels)
    with torch.no_grad():
        x_adv = atk(model, images, labels)
        assert not torch.is_grad_enabled()
    assert torch.equal(x_adv, expected)
    assert_valid(x_adv, images, atk)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_works_inside_inference_mode(name, make_model, make_batch, build_attack):
    model = make_model("cnn").eval()
    atk = build_attack(name, seed=0)
    images, labels = make_batch("cnn")
    expected = atk(model, images, labels)
    with torch.inference_mode():
        images_inf, labels_inf = images.clone(), labels.clone()
        x_adv = atk(model, images_inf, labels_inf)
        assert torch.is_inference_mode_enabled()
    assert torch.equal(x_adv, expected)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_works_under_autocast_bfloat16(name, make_model, make_batch, build_attack):
    model = make_model("cnn").eval()
    images, labels = make_batch("cnn")
    atk = build_attack(name, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = atk(model, images, labels)
        assert torch.is_autocast_enabled("cpu")
        assert model(images).dtype == torch.bfloat16  # the model really runs in bfloat16 here
    assert x_adv.dtype == torch.float32
    assert_valid(x_adv, images, atk)
    if name != "none":
        assert not torch.equal(x_adv, images)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_num_forward_backward_matches_gradient_passes(name, make_model, make_batch, build_attack):
    model = make_model("mlp").eval()
    grad_forwards: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: grad_forwards.append(args[0].requires_grad))
    images, labels = make_batch("mlp")
    atk = build_attack(name)
    atk(model, images, labels)
    assert isinstance(atk.num_forward_backward, int)
    assert sum(grad_forwards) == atk.num_forward_backward


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_labels_none_only_where_unused(name, make_model, make_batch, build_attack):
    model = make_model("mlp").eval()
    images, _ = make_batch("mlp")
    atk = build_attack(name)
    if atk.needs_labels:
        with pytest.raises(ValueError, match="needs labels"):
            atk(model, images, None)
    else:
        assert_valid(atk(model, images, None), images, atk)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_batch_checks_and_empty_batch(name, make_model, make_batch, build_attack):
    model = make_model("mlp").eval()
    images, labels = make_batch("mlp")
    atk = build_attack(name)
    with pytest.raises(ValueError, match=r"same batch size.*\(8, 16\).*\(7,\)"):
        atk(model, images, labels[:7])
    with pytest.raises(ValueError, match="floating-point"):
        atk(model, (images * 255).to(torch.uint8), labels)
    empty = atk(model, images[:0], labels[:0])
    assert empty.shape == (0, 16)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_name_and_repr(name, build_attack):
    atk = build_attack(name)
    assert atk.name == name
    text = repr(atk)
    assert text.startswith(type(atk).__name__ + "(")
    assert "eps=0.1" in text and "craft_mode='eval'" in text
    if hasattr(atk, "steps"):
        assert "steps=3" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_cuda_with_autocast_float16_and_seed(name, make_model, make_batch, build_attack):
    model = make_model("cnn").cuda().train()
    flags = [m.training for m in model.modules()]
    buffers = {key: value.clone() for key, value in model.named_buffers()}
    images, labels = (t.cuda() for t in make_batch("cnn", n=32))
    atk = build_attack(name, seed=0, craft_mode="train")
    with torch.autocast("cuda", dtype=torch.float16):
        x_adv = atk(model, images, labels)
    assert_valid(x_adv, images, atk)
    assert [m.training for m in model.modules()] == flags
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key
