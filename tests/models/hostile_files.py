"""A pickled object whose loading runs a shell command: what no loader of ours may unpickle by default."""

from __future__ import annotations

import os
from pathlib import Path


class Hostile:
    """Unpickling this object runs ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))
