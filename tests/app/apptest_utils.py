"""Helpers of the Hydra app tests: configs from Hydra's compose API (outputs in a temporary dir) and
running the app in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

#: Overrides that make an in-process run tiny: one batch everywhere, a small analysis subset.
FAST = ["trainer=debug", "regularizer.mvl.num_samples=64", "callbacks.rich_model_summary=null"]


def compose_train(overrides: Sequence[str], tmp_path: Path) -> DictConfig:
    """``train.yaml`` composed with ``overrides``; every path points into ``tmp_path``."""
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.data_dir = str(tmp_path / "data")
    HydraConfig().set_config(cfg)  # resolves ${hydra:...} and the group choices named in messages
    return cfg


@dataclass
class CliResult:
    """Outcome of one subprocess run of the app."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def last_stderr_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def app_env() -> dict[str, str]:
    """The environment of app subprocesses: headless matplotlib, Hydra's default error handling."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("LSA_TRAIN_ROOT", None)
    return env


def run_app(args: Sequence[str], cwd: Path, command: Sequence[str] | None = None, timeout: int = 240) -> CliResult:
    """Runs ``python -m lsa_train *args`` (or ``command *args``) in ``cwd``."""
    cmd = [*(command or [sys.executable, "-m", "lsa_train"]), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=app_env(), capture_output=True, text=True, timeout=timeout, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class Hostile:
    """Unpickling this object runs ``touch <marker>`` through ``os.system``: no loader may do it by default."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))
