import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("resume_script.py")


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run(tmp_path / "killed", "--kill-at-epoch", "2")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final.pt").exists()
    saved = torch.load(tmp_path / "killed" / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1  # the last epoch end before the kill
    resumed = run(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    got = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert got["mvl"] == expected["mvl"]
    assert got["history"] == expected["history"]  # every refresh saw the same weights and samples
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name


# -- through the app: python -m lsa_train, SIGKILLed, resumed from last.ckpt -------------------------
APP_QUICK = [
    "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
    "regularizer.mvl.num_samples=32", "regularizer.mvl.plot=false", "logger=none", "trainer.max_epochs=3",
    "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
]


def run_app(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(SCRIPT.parent), *sys.path]))
    cmd = [sys.executable, "-m", "lsa_train", *APP_QUICK, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_app_run_sigkilled_after_its_first_checkpoint_resumes_bit_identically(tmp_path):
    full = run_app(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    # kill_switch.KillAt SIGKILLs the process in the middle of epoch 1, after epoch 0's checkpoint
    killed = run_app(tmp_path / "killed", "+callbacks.kill._target_=kill_switch.KillAt", "+callbacks.kill.epoch=1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    # the resume rebuilds the run from its saved config, which names the kill switch: drop it here
    resumed = run_app(tmp_path / "killed", f"ckpt_path={last}", "+callbacks.kill=null")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(last, weights_only=True)
    assert got["epoch"] == expected["epoch"] == 2
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    refresh = "MVLRefreshCallback"
    history = [v["history"] for k, v in expected["callbacks"].items() if refresh in k]
    assert history and history == [v["history"] for k, v in got["callbacks"].items() if refresh in k]
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed_metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed_metrics["acc_pgd"] == full_metrics["acc_pgd"]


# -- DDP: every rank resumes its own random state --------------------------------------------------
@pytest.mark.slow
def test_ddp_resume_restores_each_ranks_own_random_state(tmp_path):
    script = Path(__file__).with_name("ddp_rng_script.py")
    for mode in ("full", "resume"):  # two epochs; then epoch 1 again from epoch 0's checkpoint
        result = subprocess.run([sys.executable, str(script), str(tmp_path), mode], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    full = [json.loads((tmp_path / f"full{rank}.json").read_text()) for rank in (0, 1)]
    resumed = [json.loads((tmp_path / f"resume{rank}.json").read_text()) for rank in (0, 1)]
    assert full[0]["1"] != full[1]["1"]  # the ranks' generators differ: rank 0's state is wrong for rank 1
    assert [r["1"] for r in resumed] == [r["1"] for r in full]
