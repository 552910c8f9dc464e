"""The configs ship inside the wheel as ``lsa_train.conf`` (found without the source tree)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from apptest_utils import app_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (the working tree gets no build/ folder)."""
    if not _can_build_offline():
        pytest.skip("building without isolation (offline) needs setuptools >= 70.1, or setuptools and wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "local")
    for name in ("lsa_train", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("lsa_train-*.whl")
    return found


def _can_build_offline() -> bool:
    if importlib.util.find_spec("setuptools") is None:
        return False
    major, minor = (int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
def test_wheel_contains_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lsa_train/conf/train.yaml" in names and "lsa_train/conf/__init__.py" in names
    expected = {f"lsa_train/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")
                if "local" not in p.parts}
    assert expected <= names, sorted(expected - names)
    groups = {n.split("/")[2] for n in names if n.startswith("lsa_train/conf/") and n.count("/") == 3}
    assert groups >= {"data", "model", "attack", "regularizer", "optimizer", "scheduler", "trainer", "callbacks",
                      "logger", "paths", "hydra", "launcher", "experiment", "hparams_search"}
    assert "lsa_train/app/train.py" in names and "lsa_train/__main__.py" in names


@pytest.mark.slow
def test_configs_compose_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    """Imports lsa_train from the wheel (a zip on PYTHONPATH), not the editable source tree."""
    code = (
        "import lsa_train.conf, sys\n"
        "assert '.whl' in lsa_train.conf.__file__, lsa_train.conf.__file__\n"
        "from hydra import compose, initialize_config_module\n"
        "with initialize_config_module('lsa_train.conf', version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['experiment=moons_model_a', 'attack=trades'])\n"
        "print(cfg.model.name, cfg.attack.base_loss.value, list(cfg.regularizer.mvl.layers))\n"
    )
    env = dict(app_env(), PYTHONPATH=str(wheel))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["mlp_a", "trades", "[2]"]
