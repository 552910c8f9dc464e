"""The README's "Your own model and data" as a user runs it, in subprocesses: a user's CNN class from their
own module trained on their own image folder; lsa-analyze and lsa-evaluate on a state dict of that CNN.
(test_readme.py runs every command of that section in-process: the pretrained torchvision and timm ones too.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import own_data
import pytest
import torch
from apptest_utils import app_env

#: Keeps each command to seconds: one epoch of a few batches, small evaluation and analysis budgets.
FAST_TRAIN = ["trainer.max_epochs=1", "regularizer.mvl.num_samples=8", "attack.steps=2", "module.val_attack.steps=2",
              "module.test_attack.steps=2", "data.batch_size=8", "data.num_workers=0", "data.augment=false"]
FAST_EVAL = ["pgd.steps=3", "autoattack.enabled=false", "masking.enabled=false"]
FAST_ANALYZE = ["num_samples=6", "perturbations=[gaussian,pgd]", "feature_map_samples=2"]


def run(command: list[str], workspace: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(app_env(), PYTHONPATH=str(workspace / "code"), TORCH_HOME=str(workspace / "torch_home"))
    return subprocess.run([sys.executable, "-m", *command], cwd=workspace, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: code/user_nets.py, images/train/<class>/*.png and a state dict of their CNN."""
    root = tmp_path_factory.mktemp("own")
    own_data.write_user_module(root / "code")
    own_data.write_image_folder(root / "images", per_class=10)
    sys.path.insert(0, str(root / "code"))
    try:
        import user_nets

        torch.manual_seed(0)
        torch.save(user_nets.SmallCNN(in_channels=1, num_classes=3).state_dict(), root / "cnn.pt")
    finally:
        sys.path.remove(str(root / "code"))
        sys.modules.pop("user_nets", None)
    return root


def test_train_a_user_cnn_on_a_user_image_folder(workspace: Path) -> None:
    run_dir = workspace / "run"
    result = run(["lsa_train", "model=custom", "model._target_=user_nets.SmallCNN", "+model.width=8",
                  "data=imagefolder", "data.root=images", *FAST_TRAIN, f"hydra.run.dir={run_dir}"], workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["setting"]["model"] == "SmallCNN"
    assert summary["model_kwargs"] == {"in_channels": 1, "num_classes": 3, "width": 8}
    assert all(name in ("conv1", "conv2", "head") for name in summary["mvl"])  # functional ReLUs: conv/linear probes
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_analyze_and_evaluate_a_state_dict_of_the_user_cnn(workspace: Path) -> None:
    model = ["model=custom", "model._target_=user_nets.SmallCNN", "model.checkpoint=cnn.pt", "data=imagefolder",
             "data.root=images"]
    analysis = workspace / "cnn_analysis"
    result = run(["lsa_train.app.analyze", *model, "eps=0.1", *FAST_ANALYZE, f"hydra.run.dir={analysis}"], workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((analysis / "lsa_results.json").read_text())
    assert list(payload["results"]["pgd"]["probe_names"]) == ["conv1", "conv2", "head"]
    evaluation = workspace / "cnn_eval"
    result = run(["lsa_train.app.evaluate", *model, "pgd.eps=0.1", *FAST_EVAL, f"hydra.run.dir={evaluation}"],
                 workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["pgd_accuracy"] <= metrics["clean_accuracy"]
    assert metrics["metadata"]["model"] == "SmallCNN"


def test_evaluate_without_a_run_needs_model_and_data(workspace: Path) -> None:
    result = run(["lsa_train.app.evaluate", "model=custom", "model._target_=user_nets.SmallCNN"], workspace)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lsa-evaluate: error:") and "no ckpt_path and no data=" in last


def test_a_model_yaml_of_the_user_through_config_dir(workspace: Path) -> None:
    # the user's own model group option, found through --config-dir next to lsa_train's configs
    (workspace / "my_conf" / "model").mkdir(parents=True)
    (workspace / "my_conf" / "model" / "small_cnn.yaml").write_text(
        "_target_: user_nets.SmallCNN\nin_channels: ???\nnum_classes: ???\nwidth: 4\n"
    )
    run_dir = workspace / "run_config_dir"
    result = run(["lsa_train", "--config-dir", "my_conf", "model=small_cnn", "data=imagefolder", "data.root=images",
                  *FAST_TRAIN, "regularizer=none", f"hydra.run.dir={run_dir}"], workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["model_kwargs"] == {"in_channels": 1, "num_classes": 3, "width": 4}


TWIN_RELU_NET = """
from torch import nn


class TwinReLUNet(nn.Module):
    \"\"\"Two activation probes with the same CM: `again` gets a non-negative tensor and changes nothing.\"\"\"

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.again = nn.ReLU()
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.again(self.act(self.conv(x))).mean(dim=(2, 3)))
"""


def test_the_lsa_term_stays_on_when_the_eta_rule_selects_no_probe(workspace: Path) -> None:
    # with two probes of equal CM, no probe is above the mean: Algorithm 1 (eta 0.25) selects none
    (workspace / "code" / "twin_relu.py").write_text(TWIN_RELU_NET)
    run_dir = workspace / "run_twin_relu"
    result = run(["lsa_train", "model=custom", "model._target_=twin_relu.TwinReLUNet", "trainer.max_epochs=2",
                  "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
                  "regularizer.mvl.num_samples=8", "regularizer.mvl.plot=false", "attack.steps=2", "logger=none",
                  f"hydra.run.dir={run_dir}"], workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert [entry["mvl"] for entry in summary["mvl_history"]] == [["act"], ["act"]]  # kept: the most vulnerable
    assert summary["lsa_term"] == {"configured": True, "active_steps": 6, "training_steps": 6, "active_fraction": 1.0}
    assert "eta=0.25 selects 0 of 2 probes; keeping the 1 most vulnerable" in result.stderr + result.stdout
    assert "| LSA term active (training steps) | 100.0% of 6 steps |" in (run_dir / "report.md").read_text()
    assert "LSA term active" in result.stdout
