"""The wall time of a training run across resumes, kept in its checkpoints."""

from __future__ import annotations

import math
import time
from typing import Any

from lightning import Callback


class WallTimeCallback(Callback):
    """Stores the run's wall time so far in every checkpoint, so that a resumed run counts the time of the
    parts before it.

    Args:
        started: ``time.perf_counter()`` when this part of the run (this command) started.
    """

    def __init__(self, started: float) -> None:
        self.started = float(started)
        #: Seconds of the earlier parts, up to the checkpoint this part resumed from (0 for a new run).
        self.before_s = 0.0
        #: Why a checkpoint's recorded time was not used, if it was not (a line for the summary).
        self.note: str | None = None
        self.restored = False
        self._stage: str | None = None

    def resume_note(self) -> str | None:
        """A line for the summary of a resumed run whose checkpoint gave no usable earlier wall time."""
        if not self.restored:
            return ("the checkpoint records no wall time (written before lsa_train kept it): the wall time counts "
                    "this part only")
        return self.note

    def elapsed_s(self) -> float:
        """Seconds of this part so far."""
        return time.perf_counter() - self.started

    def total_s(self) -> float:
        """Seconds of the whole run so far: the earlier parts' plus this one's."""
        return self.before_s + self.elapsed_s()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stage = stage  # set before Lightning restores a checkpoint's callback states

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.total_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage not in (None, "fit"):
            return  # trainer.test(ckpt_path=...) restores an earlier epoch's state: not this run's time
        self.restored = True
        value = state_dict.get("wall_time_s") if isinstance(state_dict, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            self.before_s = float(value)
        else:  # a checkpoint is data: a value that is not a duration counts as none, and the summary says so
            self.before_s = 0.0
            self.note = (f"the checkpoint's recorded wall time {value!r} is not a duration in seconds: the wall "
                         "time counts this part only")
