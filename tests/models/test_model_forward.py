"""Forward shapes and architecture details of every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsa_train.models import create_model, list_models

#: Large models (20-46M parameters): one forward with batch 1 (about 1-2 s each on 2 CPU cores).
BIG = {"wrn28_10", "wrn34_10", "vgg19"}
#: Required extra arguments of generic builders.
EXTRA_KWARGS: dict[str, dict[str, object]] = {"wide_resnet": {"depth": 10, "widen_factor": 2}}
#: Parameter counts for 10 classes, as printed by the reference implementations (CIFAR VGG and
#: ResNet of kuangliu/pytorch-cifar; WRN-28-10 and WRN-34-10 of TRADES/MART). PreAct ResNet-18
#: is ResNet-18 minus 1,792 BatchNorm parameters (no stem/shortcut BN, one final BN).
PARAMS_10_CLASSES = {
    "vgg11": 9_231_114,
    "vgg19": 20_040_522,
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "preact_resnet18": 11_172_170,
    "wrn16_1": 175_066,
    "wrn28_10": 36_479_194,
    "wrn34_10": 46_160_474,
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name: str) -> None:
    batch = 1 if name in BIG else 2
    model = create_model(name, num_classes=7, in_channels=3, input_size=32, **EXTRA_KWARGS.get(name, {}))
    out = _forward(model, torch.rand(batch, 3, 32, 32))
    assert out.shape == (batch, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PARAMS_10_CLASSES))
def test_parameter_counts_match_the_references(name: str) -> None:
    model = create_model(name, num_classes=10)
    assert _params(model) == PARAMS_10_CLASSES[name]


def test_train_mode_forward_and_backward_of_a_small_net() -> None:
    model = create_model("preact_resnet18", num_classes=3, in_channels=1, input_size=8)
    out = model(torch.rand(4, 1, 8, 8))
    out.sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "vgg11", "wrn16_1", "cnn_b", "mlp_a"])
def test_small_grey_inputs(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1, input_size=8)
    assert _forward(model, torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_resnet_basic_block_reuses_its_relu() -> None:
    model = create_model("resnet18", num_classes=10, in_channels=1, input_size=8)
    block = model.layer1[0]
    assert sum(isinstance(m, nn.ReLU) for m in block.modules()) == 1
    calls = []
    handle = block.relu.register_forward_hook(lambda *_: calls.append(1))
    try:
        _forward(model, torch.rand(2, 1, 8, 8))
    finally:
        handle.remove()
    assert len(calls) == 2


def test_activations_are_modules_and_not_inplace() -> None:
    model = create_model("wrn16_1", num_classes=10)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


def test_mlp_a_architecture_and_vector_inputs() -> None:
    model = create_model("mlp_a", num_classes=2, in_channels=2, input_size=None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 100), (100, 100), (100, 100), (100, 2)]
    assert sum(isinstance(m, nn.ELU) for m in model.modules()) == 3
    assert _forward(model, torch.rand(5, 2)).shape == (5, 2)
    same = create_model("mlp_a", num_classes=2, input_size=(2,))
    assert same.fc1.in_features == 2
    with pytest.raises(ValueError, match="expects inputs with 2 features"):
        model(torch.rand(5, 3))


def test_mlp_a_flattens_images() -> None:
    model = create_model("mlp_a", num_classes=10, in_channels=1, input_size=8)
    assert model.fc1.in_features == 64
    assert _forward(model, torch.rand(4, 1, 8, 8)).shape == (4, 10)


def test_cnn_b_padding_rule() -> None:
    mnist = create_model("cnn_b", num_classes=10, in_channels=1, input_size=28)
    assert mnist.features.conv1.padding == (0, 0)
    assert mnist.classifier.fc1.in_features == 64 * 3 * 3
    digits = create_model("cnn_b", num_classes=10, in_channels=1, input_size=8)
    assert digits.features.conv1.padding == (2, 2)
    assert digits.classifier.fc1.in_features == 64 * 2 * 2
    with pytest.raises(ValueError, match="shrinks to nothing"):
        create_model("cnn_b", num_classes=10, in_channels=1, input_size=8, padding=0)
    widths = [m.out_channels for m in mnist.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 32, 64]


def test_wide_resnet_generic_builder_and_depth_check() -> None:
    model = create_model("wide_resnet", num_classes=3, depth=16, widen_factor=2)
    assert len(model.block1) == 2 and model.fc.in_features == 128
    with pytest.raises(ValueError, match="6n \\+ 4"):
        create_model("wide_resnet", num_classes=3, depth=20, widen_factor=1)


def test_wide_resnet_dropout_option() -> None:
    model = create_model("wrn16_1", num_classes=3, drop_rate=0.3)
    assert model.block1[0].dropout.p == 0.3
    assert create_model("wrn16_1", num_classes=3).block1[0].dropout.p == 0.0
