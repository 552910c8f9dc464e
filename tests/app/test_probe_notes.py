"""What the default probes miss reaches the run's summary: a user CNN with GELU modules and one ``F.relu``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from apptest_utils import FAST
from torch import nn

from lsa_train.app.train import train


class HalfFunctionalNet(nn.Module):
    """GELU modules, and one ReLU applied as a function after ``conv2``; input ``(N, C, 8, 8)``."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 16)
        self.act2 = nn.GELU()
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(self.act1(self.conv1(x))))
        return self.head(self.act2(self.fc(x.flatten(1))))


def test_layers_without_an_activation_probe_are_named_in_the_summary_and_report(make_cfg, capsys) -> None:
    cfg = make_cfg(*FAST, "model=custom", f"model._target_={__name__}.HalfFunctionalNet")
    _, objects = train(cfg)
    summary = objects["summary"]
    (note,) = summary["notes"]
    assert "HalfFunctionalNet: 1 conv/linear layer(s) feed activations applied as functions" in note
    assert "never MVL candidates: conv2;" in note and "regularizer.mvl.probes='learnable'" in note
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["notes"] == [note]
    report = (run_dir / "report.md").read_text()
    assert f"## Notes\n\n- {note}" in report
    assert f"note: {note}" in capsys.readouterr().out.replace("\n", "")
    assert summary["class_names"] == [str(k) for k in range(10)]  # digits: the ids
