"""Signed runs (the user's own) and foreign ones (parsed as data), the write door and the checkpoint guards,
tested as functions; tests/trust/test_hostile_foreign.py tries them through the programs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from hostile import write_run_folder
from omegaconf import OmegaConf

from lsa_train.foreign import ForeignConfigError, check_foreign_config
from lsa_train.signing import KEY_ENV, SigningError, key_path, load_key, sign_run, verify_run
from lsa_train.training.guards import CheckpointStateGuard, GuardedCheckpointIO
from lsa_train.trust import TrustPolicy, UntrustedTargetError
from lsa_train.utils.io import atomic_write_text
from lsa_train.writes import WriteOutsideError, check_filename_template, check_run_folder_links, check_write_path


@pytest.fixture
def own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = tmp_path / "key" / "signing.key"
    monkeypatch.setenv(KEY_ENV, str(key))
    return key


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    write_run_folder(folder)
    return folder


def test_the_key_is_created_private_and_a_writable_key_is_refused(own_key: Path) -> None:
    assert key_path() == own_key and not own_key.exists()
    key = load_key()
    assert key is not None and len(key) == 32
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600 and load_key() == key
    own_key.chmod(0o666)
    with pytest.raises(SigningError, match="chmod 600"):
        load_key()


def test_a_signed_run_verifies_until_its_config_changes(own_key: Path, run: Path) -> None:
    assert not verify_run(run).signed and "no signature" in verify_run(run).reason
    sign_run(run)
    assert verify_run(run).signed
    (run / ".hydra" / "resumes" / "x").mkdir(parents=True)
    (run / ".hydra" / "resumes" / "x" / "config.yaml").write_text("seed: 1\n")
    assert "added or removed" in verify_run(run).reason  # a new resume record is not covered
    sign_run(run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "\n# edited\n")
    verdict = verify_run(run)
    assert not verdict.signed and "edited after it was signed" in verdict.reason


def test_another_users_key_does_not_verify(own_key: Path, run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sign_run(run)
    monkeypatch.setenv(KEY_ENV, str(own_key.parent / "other.key"))
    load_key()
    assert not verify_run(run).signed


def _saved(run: Path) -> object:
    return OmegaConf.load(run / ".hydra" / "config.yaml")


def test_a_plain_foreign_config_passes_and_programs_or_resolvers_do_not(run: Path) -> None:
    source = run / ".hydra" / "config.yaml"
    check_foreign_config(_saved(run), TrustPolicy(), source, "no signature")
    for key, value, needle in (
        ("data.num_workers", "${oc.create:{_target_:os.system}}", "interpolation"),
        ("tags", ["${oc.env:HOME}"], "interpolation"),
        ("module.compile_model", {"options": {"cpp.cxx": "sh"}}, "module.compile_model.options.cpp.cxx"),
        ("logger.csv.version", "../../..", "logger.csv.version"),
        ("callbacks.last_checkpoint.filename", "{epoch:c}", "filename"),
        ("data.batch_size", "many", "is a number"),
        ("data._args_", ["x"], "does not define"),
        ("hydra.run.dir", "/tmp", "Hydra's settings"),
    ):
        cfg = _saved(run)
        OmegaConf.update(cfg, key, value, force_add=True)
        with pytest.raises(ForeignConfigError, match="lsa-trust") as err:
            check_foreign_config(cfg, TrustPolicy(), source, "no signature")
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_conf_interpolations_and_trusted_class_arguments_are_accepted(run: Path) -> None:
    cfg = _saved(run)
    assert "${" in str(OmegaConf.to_container(cfg, resolve=False)["callbacks"]["last_checkpoint"]["dirpath"])
    OmegaConf.update(cfg, "model", {"_target_": "my_nets.Net", "width": 4, "layers": {"a": 1}}, merge=False)
    with pytest.raises(UntrustedTargetError, match=r"trusted_targets=\[my_nets"):
        check_foreign_config(cfg, TrustPolicy(), "c.yaml", "no signature")
    check_foreign_config(cfg, TrustPolicy(targets=("my_nets.*",)), "c.yaml", "no signature")


def test_write_paths_stay_inside_the_run_without_symlinks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert check_write_path(run / "checkpoints" / "last.ckpt", run, "x") == run / "checkpoints" / "last.ckpt"
    for bad in (tmp_path / "elsewhere", run / ".." / "x", "local://" + str(run)):
        with pytest.raises(WriteOutsideError):
            check_write_path(bad, run, "x")
    (run / "csv").symlink_to(tmp_path)
    with pytest.raises(WriteOutsideError, match="symlink"):
        check_write_path(run / "csv" / "version_0", run, "x")
    with pytest.raises(WriteOutsideError, match="symlink"):
        check_run_folder_links(run)


def test_filename_templates_allow_plain_fields_only() -> None:
    for good in ("last", "epoch_{epoch:03d}", "{epoch}-{step}", "{val/acc_pgd:.4f}"):
        check_filename_template(good, "filename")
    for bad in ("{epoch:c}", "../x", "/abs", "{epoch!r}", "a/{epoch}", "~x", "{epoch:>10}"):
        with pytest.raises(WriteOutsideError):
            check_filename_template(bad, "filename")


def test_the_checkpoint_writer_refuses_outside_and_never_deletes_a_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    io = GuardedCheckpointIO(run)
    io.save_checkpoint({"a": torch.ones(1)}, run / "checkpoints" / "x.ckpt")
    assert (run / "checkpoints" / "x.ckpt").is_file()
    with pytest.raises(WriteOutsideError):
        io.save_checkpoint({"a": 1}, tmp_path / "x.ckpt")
    victim = tmp_path / "victim"
    victim.mkdir()
    io.remove_checkpoint(f"local://{victim}")
    io.remove_checkpoint(run / "checkpoints")
    assert victim.is_dir() and (run / "checkpoints" / "x.ckpt").is_file() and len(io.refused) == 2
    io.remove_checkpoint(run / "checkpoints" / "x.ckpt")
    assert not (run / "checkpoints" / "x.ckpt").exists()


def test_the_state_guard_drops_paths_outside_the_checkpoints_folder(tmp_path: Path) -> None:
    folder = (tmp_path / "run" / "checkpoints").absolute()
    folder.mkdir(parents=True)
    good = str(folder / "epoch_001.ckpt")
    state = {"best_model_path": "local://~/dir", "kth_best_model_path": good, "last_model_path": "/etc",
             "dirpath": str(folder), "best_k_models": {good: 1.0, "/tmp/x.ckpt": 2.0}}
    guard = CheckpointStateGuard(folder)
    guard.on_load_checkpoint(None, None, {"callbacks": {"ModelCheckpoint{'monitor': 'm'}": state}})  # type: ignore[arg-type]
    assert state["best_model_path"] == "" and state["last_model_path"] == "" and state["kth_best_model_path"] == good
    assert state["best_k_models"] == {good: 1.0} and state["dirpath"] == str(folder)
    assert len(guard.dropped) == 3 and all("ModelCheckpoint" in line for line in guard.dropped)


def test_load_from_checkpoint_ignores_compile_options_in_the_file(tmp_path: Path) -> None:
    from torch import nn

    from lsa_train.training import LSARegularizedModule

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    module = LSARegularizedModule(net, compile_model={"options": {"cpp.cxx": "sh -c 'touch x'"}})
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)
    loaded = LSARegularizedModule.load_from_checkpoint(path, model=nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    assert loaded.hparams.compile_model is False


def test_written_reports_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
