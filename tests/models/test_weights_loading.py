"""Weights files of every common layout load without running code from them (lsa_train.models.weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from hostile_files import Hostile
from torch import nn

from lsa_train.models import UntrustedFileError, load_weights, read_weights_file


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize(
    "layout",
    ["plain", "lightning", "model_key", "state_dict_dataparallel", "module_prefix", "model_prefix", "torchscript"],
)
def test_every_layout_loads_the_same_weights(tmp_path: Path, layout: str) -> None:
    source = _net()
    sd = source.state_dict()
    path = tmp_path / f"{layout}.pt"
    if layout == "plain":
        torch.save(sd, path)
    elif layout == "lightning":  # an LSARegularizedModule checkpoint: model.<...> keys plus other entries
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in sd.items()}, "optimizer_states": []}, path)
    elif layout == "model_key":
        torch.save({"model": sd, "epoch": 1}, path)
    elif layout == "state_dict_dataparallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif layout == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif layout == "model_prefix":
        torch.save({f"model.module.{k}": v for k, v in sd.items()}, path)
    else:
        torch.jit.save(torch.jit.trace(source, torch.rand(1, 1, 8, 8)), path)
    target = _net()
    assert not _same(source, target)
    if layout == "torchscript":  # loading TorchScript runs the code stored in it: only with trust
        with pytest.raises(UntrustedFileError, match=r"TorchScript archive.*trust_checkpoint=true"):
            load_weights(target, path)
        assert not _same(source, target)
    report = load_weights(target, path, trust=layout == "torchscript")
    assert report.complete
    assert _same(source, target)


def test_missing_and_unexpected_keys_are_named_and_strict_false_loads_the_rest(tmp_path: Path) -> None:
    source = _net()
    sd = dict(source.state_dict())
    sd.pop("3.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['3.bias'\], 1 unexpected key\(s\) \['extra.weight'\]"):
        load_weights(_net(), tmp_path / "partial.pt")
    target = _net()
    report = load_weights(target, tmp_path / "partial.pt", strict=False)
    assert report.missing == ["3.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(target[0].weight, source[0].weight)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    torch.save(other.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"'3.weight' is \(5, 144\) in the file and \(3, 144\) in the model"):
        load_weights(_net(), tmp_path / "w.pt")


def test_a_file_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _net().state_dict(), "payload": Hostile(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UntrustedFileError, match="weights_only=True"):
        load_weights(_net(), tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_trust_loads_a_file_with_plain_python_objects(tmp_path: Path) -> None:
    source = _net()
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "old.pt")
    with pytest.raises(UntrustedFileError):
        read_weights_file(tmp_path / "old.pt")
    target = _net()
    load_weights(target, tmp_path / "old.pt", trust=True)
    assert _same(source, target)


def test_corrupt_and_missing_files_raise_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="corrupt or not a PyTorch file") as info:
        read_weights_file(tmp_path / "junk.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_weights_file(tmp_path / "absent.pt")
    torch.save({"epoch": 1, "note": "no tensors"}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="found no network weights"):
        load_weights(_net(), tmp_path / "empty.pt")


def test_strict_false_refuses_a_file_that_fills_too_little_and_names_the_prefixes(tmp_path: Path) -> None:
    other = nn.Sequential()
    other.add_module("backbone", nn.Conv2d(1, 4, 3))
    other.add_module("fc", nn.Linear(4, 3))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"set model.strict=false"):
        load_weights(_net(), tmp_path / "other.pt")
    target = _net()
    before = [t.clone() for t in target.state_dict().values()]
    with pytest.raises(ValueError, match=r"fills only 0 of the model's 4 tensors .*file's keys start with "
                                         r"\['backbone', 'fc'\], the model's with \['0', '3'\]"):
        load_weights(target, tmp_path / "other.pt", strict=False)
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values(), strict=True))  # untouched
    half = dict(_net().state_dict())
    half.pop("3.weight")
    torch.save(half, tmp_path / "most.pt")
    report = load_weights(_net(), tmp_path / "most.pt", strict=False)
    assert (report.loaded, report.total, report.missing) == (3, 4, ["3.weight"])
    assert "3 of 4 tensors loaded (strict=false: 1 missing, 0 unexpected" in report.describe()


def test_a_plain_state_dict_fills_the_network_inside_a_normalized_model(tmp_path: Path) -> None:
    from lsa_train.models import Normalize, NormalizedModel

    source = _net()
    torch.save(source.state_dict(), tmp_path / "plain.pt")  # no net. prefix, no normalization statistics
    wrapped = NormalizedModel(Normalize([0.5], [0.25]), _net())
    report = load_weights(wrapped, tmp_path / "plain.pt")
    assert report.complete and report.into == "net" and (report.loaded, report.total) == (4, 4)
    assert _same(source, wrapped.net)
    assert wrapped.normalize.mean.flatten().tolist() == [0.5]  # the statistics stay the config's
    torch.save(wrapped.state_dict(), tmp_path / "wrapped.pt")  # our own wrapped model: every key, no redirect
    again = NormalizedModel(Normalize([0.1], [0.2]), _net())
    report = load_weights(again, tmp_path / "wrapped.pt")
    assert report.into == "" and report.total == 6 and again.normalize.mean.flatten().tolist() == [0.5]
