"""Prints ``name==version`` constraints pinning the core dependencies to the lowest versions
``pyproject.toml`` allows (its ``>=`` floors), for the CI step that tests those floors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: Core dependencies whose floors CI installs.
FLOORED = ("torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "omegaconf")


def floor_constraints(pyproject: Path) -> list[str]:
    """``["lightning==2.6.0", ...]`` from the ``name>=version`` entries of ``[project].dependencies``.

    Raises:
        ValueError: A package of :data:`FLOORED` has no ``>=`` floor.
    """
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    floors = {}
    for entry in dependencies:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?", entry)
        if match and match[1].lower() in FLOORED:
            floors[match[1].lower()] = match[2]
    missing = [name for name in FLOORED if name not in floors]
    if missing:
        raise ValueError(f"pyproject.toml gives no '>=' floor for {missing}; every one of {list(FLOORED)} needs one")
    return [f"{name}=={floors[name]}" for name in FLOORED]


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print("\n".join(floor_constraints(root / "pyproject.toml")))
