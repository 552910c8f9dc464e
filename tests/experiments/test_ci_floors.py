"""``.ci/floor_constraints.py``: the CI floors step pins exactly the floors pyproject.toml declares."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "floor_constraints.py"


def load_script():
    spec = importlib.util.spec_from_file_location("floor_constraints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constraints_pin_the_declared_floors_of_the_pure_python_core_dependencies():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=True)
    pins = dict(line.split("==") for line in out.stdout.split())
    assert list(pins) == ["torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "omegaconf"]
    declared = (ROOT / "pyproject.toml").read_text()
    for name, version in pins.items():
        assert re.search(rf'"{re.escape(name)}>={re.escape(version)}"', declared), name
    assert tuple(int(part) for part in pins["lightning"].split(".")[:2]) >= (2, 6)  # fit(weights_only=...)
    # torch.load(weights_only=True) refuses TorchScript from 2.6 on (CVE-2025-32434)
    assert tuple(int(part) for part in pins["torch"].split(".")[:2]) >= (2, 6)
    assert not re.search(r'"torch(vision)?[^"]*<', declared)  # no upper caps on torch/torchvision


def test_a_missing_floor_is_a_clear_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["torch>=2.6", "torchvision>=0.21", "lightning", "torchmetrics>=1.0", '
        '"hydra-core>=1.3", "omegaconf>=2.2.1"]\n'
    )
    with pytest.raises(ValueError, match=r"no '>=' floor for \['lightning'\]"):
        load_script().floor_constraints(tmp_path / "pyproject.toml")
