"""Pretrained torchvision weights from torchvision's cache, timm with a local file, RobustBench's zoo layout.

Nothing is downloaded: each test writes the file where the package's own loader looks.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torchvision
from hostile_files import Hostile

from lsa_train.models import NormalizedModel, create_model


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$TORCH_HOME``: torchvision's cache lives in ``$TORCH_HOME/hub/checkpoints``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def cache_torchvision_weights(torch_home: Path, name: str, weights: str = "DEFAULT") -> dict[str, torch.Tensor]:
    """Writes a random ``tv:<name>`` state dict to the cache file of ``weights``; returns it."""
    member = torchvision.models.get_model_weights(name)[weights]
    state = torchvision.models.get_model(name, weights=None, num_classes=len(member.meta["categories"])).state_dict()
    target = torch_home / "hub" / "checkpoints" / os.path.basename(member.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return state


def test_torchvision_weights_come_from_the_cache_with_new_head_and_grey_stem(torch_home: Path) -> None:
    state = cache_torchvision_weights(torch_home, "resnet18")
    model = create_model("tv:resnet18", num_classes=4, in_channels=1, input_size=32, weights="DEFAULT")
    assert isinstance(model, NormalizedModel)
    net = model.net
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])  # pretrained body
    assert net.fc.out_features == 4  # new head for 4 classes
    assert torch.allclose(net.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))  # grey stem from RGB
    imagenet_mean = sum([0.485, 0.456, 0.406]) / 3
    assert model.normalize.mean.flatten().tolist() == pytest.approx([imagenet_mean])
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def test_torchvision_cache_file_that_runs_code_is_refused(torch_home: Path, tmp_path: Path) -> None:
    member = torchvision.models.ResNet18_Weights.DEFAULT
    target = torch_home / "hub" / "checkpoints" / os.path.basename(member.url)
    target.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": Hostile(marker)}, target)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed|weights_only"):
        create_model("tv:resnet18", num_classes=1000, weights="DEFAULT")
    assert not marker.exists()


needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


@needs_timm
def test_timm_model_from_a_local_weights_file(tmp_path: Path) -> None:
    import timm

    from lsa_train.models.timm_models import create_timm_model

    source = timm.create_model("resnet18", num_classes=1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "resnet18.pth")
    model = create_timm_model("resnet18", num_classes=3, in_channels=3, weights_file=str(tmp_path / "resnet18.pth"))
    assert isinstance(model, NormalizedModel)
    assert torch.equal(model.net.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert model.net.fc.out_features == 3
    assert model.normalize.mean.flatten().tolist() == pytest.approx(list(source.pretrained_cfg["mean"]))
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        create_timm_model("resnet_nope", num_classes=3)


@pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="robustbench is not installed")
def test_robustbench_model_from_its_model_dir(tmp_path: Path) -> None:
    from lsa_train.models.robustbench_models import _import_robustbench_utils, load_robustbench_model

    _import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Sehwag2021Proxy_R18"
    source = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, folder / f"{name}.pt")
    model = load_robustbench_model(name, dataset="cifar10", threat_model="Linf", model_dir=tmp_path)
    assert not model.training
    first = next(iter(source.state_dict()))
    assert torch.equal(model.state_dict()[first], source.state_dict()[first])
    with pytest.raises(ValueError, match="not in RobustBench's cifar10/Linf zoo"):
        load_robustbench_model("NoSuchModel2099", model_dir=tmp_path)


def test_a_plain_torchvision_state_dict_fits_model_tv_with_pretrained_weights(torch_home: Path, tmp_path: Path) -> None:
    from lsa_train.factory import build_model

    cache_torchvision_weights(torch_home, "resnet18")
    mine = torchvision.models.resnet18(num_classes=10).state_dict()  # the user's fine-tuned torchvision resnet18
    torch.save(mine, tmp_path / "mine.pth")
    node = {"_target_": "lsa_train.models.create_model", "name": "tv:resnet18", "weights": "DEFAULT",
            "checkpoint": str(tmp_path / "mine.pth")}
    model, shown = build_model(node, facts={"num_classes": 10, "in_channels": 3, "input_size": [32, 32]})
    assert isinstance(model, NormalizedModel)
    assert torch.equal(model.net.layer3[1].conv2.weight, mine["layer3.1.conv2.weight"])
    assert shown["checkpoint_loaded"].endswith("122 of 122 tensors loaded into net")


def test_torchvision_weights_offline_name_the_cache_file(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ValueError, match=rf"'{expected}' is not in torchvision's cache and could not be downloaded"):
        create_model("tv:resnet18", num_classes=10, weights="DEFAULT")
