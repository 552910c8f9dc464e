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
