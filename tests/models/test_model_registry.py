"""Registry, normalization wrapper and torchvision adapter of ``lsa_train.models``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsa_train.models import Normalize, NormalizedModel, create_model, list_models, register_model
from lsa_train.models.torchvision_models import adapt_first_conv

EXPECTED_MODELS = {
    "mlp_a",
    "cnn_b",
    "vgg11",
    "vgg19",
    "resnet18",
    "resnet34",
    "preact_resnet18",
    "wide_resnet",
    "wrn16_1",
    "wrn28_10",
    "wrn34_10",
}


def test_list_models_contains_the_documented_names() -> None:
    names = list_models()
    assert set(names) == EXPECTED_MODELS
    assert names == sorted(names)


def test_list_models_pattern() -> None:
    assert list_models("resnet*") == ["resnet18", "resnet34"]
    assert list_models("wrn*") == ["wrn16_1", "wrn28_10", "wrn34_10"]
    assert list_models("nothing*") == []


def test_list_models_tv_pattern_lists_torchvision_classifiers() -> None:
    names = list_models("tv:resnet*")
    assert "tv:resnet18" in names and "tv:resnet50" in names
    assert all(name.startswith("tv:resnet") for name in names)
    assert "tv:fasterrcnn_resnet50_fpn" not in list_models("tv:*")  # detection models are excluded


def test_unknown_model_raises_one_line_error_with_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'xyz'") as info:
        create_model("xyz", num_classes=3)
    message = str(info.value)
    assert "\n" not in message
    assert "resnet18" in message and "wrn34_10" in message and "tv:<torchvision name>" in message


def test_unknown_torchvision_model_raises() -> None:
    with pytest.raises(ValueError, match="unknown torchvision classification model 'not_a_net'"):
        create_model("tv:not_a_net", num_classes=3)


def test_torchvision_unknown_weights_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"weights='IMAGENET9K' is not a weights of tv:resnet18; .*IMAGENET1K_V1"):
        create_model("tv:resnet18", num_classes=3, weights="IMAGENET9K")


def test_register_model_rejects_duplicates() -> None:
    def resnet18(**kwargs: object) -> nn.Module:  # same name as the registered one
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("mlp_a", num_classes=num_classes, in_channels=2, input_size=None)  # type: ignore[arg-type]


def test_unexpected_kwargs_are_rejected() -> None:
    with pytest.raises(TypeError, match="unexpected"):
        create_model("resnet18", num_classes=3, widen=2)


def test_tv_resnet18_with_one_input_channel() -> None:
    model = create_model("tv:resnet18", num_classes=4, in_channels=1)
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64 and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 4)


def test_adapt_first_conv_reports_the_replaced_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 3, 1))
    assert adapt_first_conv(model, 5) == "0"
    assert model[0].in_channels == 5 and model[0].out_channels == 8 and model[0].bias is None
    assert model[2].in_channels == 8
    with pytest.raises(ValueError, match="no 3-channel"):
        adapt_first_conv(nn.Sequential(nn.Linear(3, 3)), 1)


# -- normalization --------------------------------------------------------------------------


def test_normalization_inside_the_model_matches_manual_normalization() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5, mean=mean, std=std).eval()
    assert isinstance(model, NormalizedModel)
    x = torch.rand(3, 3, 16, 16)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(manual))


def test_without_statistics_the_bare_net_is_returned() -> None:
    model = create_model("wrn16_1", num_classes=3)
    assert not isinstance(model, NormalizedModel)
    assert not any(isinstance(m, Normalize) for m in model.modules())


def test_probe_names_stay_readable_with_normalization() -> None:
    model = create_model("resnet18", num_classes=3, mean=[0.5] * 3, std=[0.25] * 3)
    names = dict(model.named_modules())
    assert "normalize" in names and "net.layer1.0.relu" in names and "net.fc" in names


def test_vector_normalization_for_mlp_a() -> None:
    model = create_model("mlp_a", num_classes=2, in_channels=2, input_size=None, mean=[0.5, 0.4], std=[0.2, 0.1])
    assert model.normalize.mean.shape == (1, 2) and model.normalize.std.shape == (1, 2)
    x = torch.rand(7, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - torch.tensor([0.5, 0.4])) / torch.tensor([0.2, 0.1])))


def test_normalize_buffers_and_validation() -> None:
    norm = Normalize([0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    assert norm.mean.shape == (1, 3, 1, 1)
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    assert not list(norm.parameters())
    with pytest.raises(ValueError, match="> 0"):
        Normalize([0.1], [0.0])
    with pytest.raises(ValueError, match="equal length"):
        Normalize([0.1, 0.2], [1.0])


def test_mean_std_must_match_the_channels_and_come_together() -> None:
    with pytest.raises(ValueError, match="1 entries but the input has 3 channels"):
        create_model("resnet18", num_classes=3, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="both mean and std"):
        create_model("resnet18", num_classes=3, mean=[0.5, 0.5, 0.5])


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "wrn16_1", "preact_resnet18", "cnn_b", "tv:resnet18"])
def test_image_models_reject_vector_input_sizes(name: str) -> None:
    with pytest.raises(ValueError, match="this model takes images"):
        create_model(name, num_classes=3, in_channels=2, input_size=None)
