"""Fixtures of the Hydra app tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from apptest_utils import compose_train
from omegaconf import DictConfig


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, out="run")``: ``train.yaml`` composed with ``overrides``, writing into
    ``tmp_path / out``."""

    def make(*overrides: str, out: str = "run") -> DictConfig:
        return compose_train(overrides, tmp_path / out)

    return make
