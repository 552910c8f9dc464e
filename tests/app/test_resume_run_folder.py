"""``python -m lsa_train ckpt_path=<run>/checkpoints/last.ckpt`` resumes *that* run: its own config (a user's
model included), this command line's overrides on top, in its own folder (issue 20, item 10), with the run
folder's saved config treated as data (issue 19)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import own_data
import pytest
import torch
import yaml
from apptest_utils import app_env

#: One short epoch of a user's CNN on digits.
FAST = ["++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", "regularizer.mvl.num_samples=16", "attack.steps=2", "logger=none",
        "callbacks.rich_model_summary=null", "callbacks.rich_progress_bar=null"]
USER_MODEL = ["model=custom", "model._target_=my_resumed_nets.SmallCNN", "+model.width=4"]


def run(args: list[str], workspace: Path, program: str = "lsa_train") -> subprocess.CompletedProcess:
    env = dict(app_env(), PYTHONPATH=str(workspace / "code"))
    return subprocess.run([sys.executable, "-m", program, *args], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run of a user's CNN; returns its run dir."""
    workspace = tmp_path_factory.mktemp("resume")
    own_data.write_user_module(workspace / "code", name="my_resumed_nets")
    run_dir = workspace / "logs" / "train" / "runs" / "first"
    result = run([*USER_MODEL, *FAST, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_resume_continues_the_run_with_its_own_config_in_its_own_folder(first_run: Path) -> None:
    workspace = first_run.parents[3]
    last = first_run / "checkpoints" / "last.ckpt"
    saved_config = (first_run / ".hydra" / "config.yaml").read_bytes()
    # the same run handed over by someone else (no signature of this user): its class is not trusted by
    # default, one line says how to allow it
    colleague = workspace / "colleague" / "first"
    shutil.copytree(first_run, colleague)
    (colleague / ".hydra" / "signature.json").unlink()
    refused = run([f"ckpt_path={colleague / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"], workspace)
    line = _one_line(refused)
    assert "model._target_=my_resumed_nets.SmallCNN" in line and "trusted_targets=[my_resumed_nets.*]" in line
    # a resume cannot change what the run trains
    line = _one_line(run([f"ckpt_path={last}", "model=resnet18"], workspace))
    assert "model=resnet18" in line and "model=custom" in line

    # the user's own run is signed: the README commands evaluate, analyze and resume it as it is
    evaluated = run([f"ckpt_path={last}", "max_samples=32", "autoattack.enabled=false", "pgd.steps=2"], workspace,
                    "lsa_train.app.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    analyzed = run([f"ckpt_path={last}", "num_samples=16"], workspace, "lsa_train.app.analyze")
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    resumed = run([f"ckpt_path={last}", "trainer.max_epochs=2"], workspace)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in first_run.parent.iterdir()) == ["first"]  # no new run dir
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 6  # epoch 0 restored (3 steps), epoch 1 trained (3 more)
    summary = json.loads((first_run / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2 and summary["setting"]["model"] == "SmallCNN"
    assert summary["model_kwargs"]["width"] == 4 and summary["resumed_from"] == str(last)
    assert summary["resume"]["run_dir"] == str(first_run)
    assert "resumed the run in" in (first_run / "report.md").read_text()
    assert (first_run / ".hydra" / "config.yaml").read_bytes() == saved_config  # the run's record is kept
    (record,) = (first_run / ".hydra" / "resumes").iterdir()
    effective = yaml.safe_load((record / "config.yaml").read_text())
    assert effective["trainer"]["max_epochs"] == 2 and effective["model"]["_target_"] == "my_resumed_nets.SmallCNN"
    assert "trainer.max_epochs=2" in yaml.safe_load((record / "overrides.yaml").read_text())
    # no epoch left: the run is only tested, says so, and exits 0 (no fit metric to return is not an error)
    again = run([f"ckpt_path={last}", "trainer.max_epochs=2"], workspace)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing was trained, the run was only tested" in again.stdout
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_a_vouched_target_and_a_switched_trainer_are_taken_from_the_command_line(first_run: Path) -> None:
    workspace = first_run.parents[3]
    last = first_run / "checkpoints" / "last.ckpt"
    line = _one_line(run([f"ckpt_path={last}", *USER_MODEL, "trainer.max_epochs=1", *FAST], workspace))
    assert "trainer.max_epochs=1" in line and "has finished 2 epochs" in line  # not Lightning's traceback
    # the same model config given again vouches for the class; trainer=cpu switches the trainer group
    resumed = run([f"ckpt_path={last}", *USER_MODEL, "trainer=cpu", "++trainer.max_epochs=3", *FAST], workspace)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((first_run / "metrics.json").read_text())
    assert summary["resume"]["switched_groups"] == {"trainer": "cpu"}
