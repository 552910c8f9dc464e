"""lsa_train.trust: the allow list covers our configs and nothing more, policies come from the command line,
saved configs and torch files are data."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hostile import PickleBomb, write_torchscript_bomb
from omegaconf import OmegaConf

from lsa_train.trust import (
    ALLOWED_TARGETS,
    TrustPolicy,
    UntrustedFileError,
    UntrustedTargetError,
    check_checkpoint_link,
    check_saved_config,
    command_line_targets,
    escapes_run_folder,
    is_torchscript_file,
    policy_from_command_line,
    read_torch_file,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def _conf_targets() -> set[str]:
    found = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and value != "???":
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in CONF.rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return found


def test_every_target_our_configs_name_is_allowed() -> None:
    targets = _conf_targets()
    assert "lsa_train.models.create_model" in targets and len(targets) > 20
    assert targets <= ALLOWED_TARGETS, sorted(targets - ALLOWED_TARGETS)


@pytest.mark.parametrize("target", ["torch.load", "torch.jit.load", "torch.hub.load", "os.system",
                                    "sympy.sympify", "builtins.eval", "lsa_train.models.weights.read_weights_file",
                                    "lsa_train.trust.read_torch_file", "hydra.utils.instantiate"])
def test_callables_that_run_code_are_not_allowed(target: str) -> None:
    assert not TrustPolicy().allows_target(target)


def test_the_command_line_adds_targets_by_pattern_or_by_repeating_them() -> None:
    assert command_line_targets(["model=custom", "model._target_=my_nets.SmallCNN", "+data._target_='pkg.DM'",
                                 "trainer.max_epochs=3"]) == ("my_nets.SmallCNN", "pkg.DM")
    cfg = OmegaConf.create({"trust_checkpoint": False, "trusted_targets": ["my_nets.*"]})
    policy = policy_from_command_line(cfg, ["+callbacks.x._target_=kill.KillAt"])
    assert policy.allows_target("my_nets.SmallCNN") and policy.allows_target("kill.KillAt")
    assert not policy.allows_target("my_netsX.Y") and not policy.allows_target("other.Net")
    assert not policy.unpickle
    with pytest.raises(ValueError, match=r"trusted_targets=my_nets\.\* must be a list"):
        policy_from_command_line(OmegaConf.create({"trusted_targets": "my_nets.*"}))
    with pytest.raises(ValueError, match="trust_checkpoint=yes must be true or false"):
        policy_from_command_line(OmegaConf.create({"trust_checkpoint": "yes"}))


def test_a_saved_config_is_checked_at_every_depth_before_anything_is_imported() -> None:
    ours = OmegaConf.create({"model": {"_target_": "lsa_train.models.create_model", "name": "cnn_b"},
                             "module": {"_target_": "lsa_train.training.LSARegularizedModule",
                                        "val_attack": {"_target_": "lsa_train.attacks.PGD"}}})
    check_saved_config(ours, TrustPolicy(), "run/config.yaml")
    nested = OmegaConf.create({"data": {"_target_": "lsa_train.data.DigitsDataModule",
                                        "transform": {"_target_": "torch.nn.Identity",
                                                      "_args_": [{"_target_": "never.imported.Module"}]}}})
    with pytest.raises(UntrustedTargetError, match=r"sets data.transform._target_=torch.nn.Identity.*"
                                                   r"trusted_targets=\[torch.nn.\*\]"):
        check_saved_config(nested, TrustPolicy(), "run/config.yaml")
    with pytest.raises(UntrustedTargetError, match=r"data.transform._args_\[0\]._target_=never.imported.Module"):
        check_saved_config(nested, TrustPolicy(targets=("torch.nn.Identity",)), "run/config.yaml")
    check_saved_config(nested, TrustPolicy(targets=("torch.nn.Identity", "never.*")), "run/config.yaml")
    import sys

    assert "never" not in sys.modules


def test_an_interpolated_target_is_refused() -> None:
    cfg = OmegaConf.create({"evil": "os.system", "data": {"_target_": "${evil}"}})
    with pytest.raises(UntrustedTargetError, match="not a plain dotted path"):
        check_saved_config(cfg, TrustPolicy(targets=("*",)), "config.yaml")


def test_torchscript_runs_nothing_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = write_torchscript_bomb(tmp_path / "bomb.pt", marker)
    assert is_torchscript_file(path)
    with pytest.raises(UntrustedFileError, match=r"TorchScript archive.*trust_checkpoint=true"):
        read_torch_file(path)
    assert not marker.exists()
    assert set(read_torch_file(path, trust=True)) == {"weight"}  # trust: torch.jit.load, which runs its code
    assert marker.exists()


def test_an_archive_torch_would_take_for_torchscript_is_one(tmp_path: Path) -> None:
    """torch.load hands any zip with a constants.pkl record to torch.jit.load (before torch 2.6 even with
    weights_only=True): such a file counts as TorchScript here whatever else it holds."""
    path = tmp_path / "disguised.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("disguised/constants.pkl", b"")
    assert is_torchscript_file(path)
    with pytest.raises(UntrustedFileError):
        read_torch_file(path)


def test_a_pickle_bomb_is_refused_and_named(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({"w": torch.zeros(1), "x": PickleBomb(marker)}, tmp_path / "bomb.pt")
    with pytest.raises(UntrustedFileError, match=r"refuses \(unsupported GLOBAL (posix|os)\.system\).*"
                                                 r"trust_checkpoint=true"):
        read_torch_file(tmp_path / "bomb.pt")
    assert not marker.exists()


def test_a_checkpoint_symlinked_out_of_its_run_folder_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other" / "checkpoints"
    other.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, other / "last.ckpt")
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, run / "epoch_001.ckpt")
    (run / "last.ckpt").symlink_to(other / "last.ckpt")
    (run / "best.ckpt").symlink_to(run / "epoch_001.ckpt")  # inside the run folder: fine
    assert escapes_run_folder(run / "last.ckpt") and not escapes_run_folder(run / "best.ckpt")
    with pytest.raises(ValueError, match=r"is a symlink to .*other/checkpoints/last.ckpt', outside the run folder"):
        check_checkpoint_link(run / "last.ckpt")
    check_checkpoint_link(run / "best.ckpt")
    linked_run = tmp_path / "linked_run"
    linked_run.symlink_to(tmp_path / "run")  # a symlinked run folder keeps its files inside it
    assert not escapes_run_folder(linked_run / "checkpoints" / "epoch_001.ckpt")
