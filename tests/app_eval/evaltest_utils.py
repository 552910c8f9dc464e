"""Helpers of the evaluate/analyze app tests: configs from Hydra's compose API, outputs in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import lsa_train.app.checkpoint_loading as checkpoint_loading

#: Evaluation settings that keep a run to a few seconds on a CPU.
FAST_EVAL = [
    "max_samples=64", "pgd.steps=5", "autoattack.n_samples=16", "masking.square_queries=50",
    "masking.square_max_samples=32", "torch_threads=1",
]


def compose_app(config_name: str, overrides: Sequence[str], out_dir: Path) -> DictConfig:
    """``<config_name>.yaml`` composed with ``overrides``, writing into ``out_dir``."""
    checkpoint_loading.register_resolvers()
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir / "logs")
    HydraConfig().set_config(cfg)
    return cfg


def app_env() -> dict[str, str]:
    """Headless matplotlib, Hydra's default error handling."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("LSA_TRAIN_ROOT", None)
    return env


def run_module(module: str, args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m <module> *args`` in ``cwd``."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=app_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
