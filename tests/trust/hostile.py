"""Hostile artifacts for the trust-boundary tests: each one runs code (writes a marker file) if it is loaded
or instantiated the unsafe way. Nothing here runs until a test builds it in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lsa_train.data import DigitsDataModule
from lsa_train.models import create_model


class PickleBomb:
    """Unpickling this object runs ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _ScriptBomb(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) writes ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2, 2))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]
        torch.save(torch.zeros(1), self.marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def write_torchscript_bomb(path: Path, marker: Path) -> Path:
    """A TorchScript archive at ``path`` whose loading writes ``marker``."""
    torch.jit.script(_ScriptBomb(str(marker))).save(str(path))
    return path


def write_marker_module(folder: Path, marker: Path, name: str = "evil_targets") -> str:
    """A Python module ``<folder>/<name>.py`` whose function ``run`` writes ``marker``; returns its dotted path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(
        "import pathlib\n\n\n"
        "def run(*args, **kwargs):\n"
        f"    pathlib.Path({str(marker)!r}).write_text(repr(args))\n"
        "    raise SystemExit(0)\n"
    )
    return f"{name}.run"


def write_run_folder(run_dir: Path, overrides: list[str] | None = None) -> Path:
    """A run folder as ``lsa-train`` writes one (digits, model B): ``.hydra/config.yaml`` composed from
    ``conf/`` and ``checkpoints/last.ckpt`` with the untrained network's weights. Returns the checkpoint."""
    with initialize_config_module("lsa_train.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides or []))
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    net = create_model("cnn_b", **DigitsDataModule().model_kwargs())
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}},
               ckpt)
    return ckpt


def edit_run_config(run_dir: Path, **values: object) -> None:
    """Sets dotted keys of the run's saved config: ``edit_run_config(run, **{"data._target_": "x.run"})``."""
    path = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, path)
