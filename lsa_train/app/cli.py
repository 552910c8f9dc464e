"""Runs a ``@hydra.main`` entry point with one-line error messages and meaningful exit codes.

Hydra prints composition errors over several lines (plus a hint about ``HYDRA_FULL_ERROR``). The
entry points of this package instead end with one line on stderr naming the bad value, and exit with

* ``2``: a configuration error (bad override, typo'd key, bad value, missing data, unwritable dir);
  nothing was trained;
* ``1``: a multirun in which some jobs failed (the sweep summary is written first).

Other exceptions propagate with their full traceback. Setting ``HYDRA_FULL_ERROR=1`` yourself
disables the one-line rendering (every error then shows its traceback).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from lsa_train.app.errors import ConfigError, one_line

#: Exceptions reported as configuration errors (exit code 2).
CONFIG_ERRORS: tuple[type[BaseException], ...] = (ConfigError, HydraException, OmegaConfBaseException)

_state: dict[str, Any] = {"task_started": False, "sweep_failure": None}


def mark_task_started() -> None:
    """Called by the task function: from now on an ``OSError`` is not about the run dir."""
    _state["task_started"] = True


def report_sweep_failure(message: str) -> None:
    """Called at the end of a multirun in which jobs failed: :func:`run_cli` then exits with code 1.

    (Hydra turns exceptions raised by its callbacks into warnings, so the callback reports instead.)
    """
    _state["sweep_failure"] = message


def run_cli(entry: Callable[[], Any], prog: str) -> None:
    """Calls ``entry()`` (a ``@hydra.main`` function reading ``sys.argv``), rendering known errors.

    Args:
        entry: The decorated Hydra main function.
        prog: Program name shown in front of error lines (e.g. ``lsa-train``).
    """
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    if user_full_error == "1":
        entry()
        return
    _state["task_started"] = False
    _state["sweep_failure"] = None
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise instead of printing; we print one line
    try:
        entry()
    except CONFIG_ERRORS as err:
        _fail(prog, one_line(err) + _plugin_hint(str(err)), code=2)
    except OSError as err:
        if _state["task_started"]:
            raise
        _fail(prog, f"cannot create the run directory ({err}); set hydra.run.dir / hydra.sweep.dir or "
                    "paths.log_dir to a writable folder", code=2)
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_full_error
    if _state["sweep_failure"]:
        _fail(prog, _state["sweep_failure"], code=1)


def _plugin_hint(message: str) -> str:
    """Names the pip package when a config of a missing Hydra plugin (sweeper, launcher) was asked for."""
    match = re.search(r"Could not find 'hydra/(sweeper|launcher)/(\w+)'", message)
    if not match:
        return ""
    kind, name = match.groups()
    return f" (the {name} {kind} is a Hydra plugin: pip install hydra-{name.split('_')[0]}-{kind})"


def _fail(prog: str, message: str, code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise SystemExit(code)
