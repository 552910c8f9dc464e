"""What the default probes miss reaches the run's summary: a user CNN with GELU modules and one ``F.relu``."""

from __future__ import annotations

import json
from pathlib import Path

from apptest_utils import FAST

from lsa_train.app.train import train


def test_layers_without_an_activation_probe_are_named_in_the_summary_and_report(make_cfg, capsys) -> None:
    cfg = make_cfg(*FAST, "model=custom", "model._target_=shared_nets.HalfFunctionalNet")
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
