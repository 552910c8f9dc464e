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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from lsa_train.app.errors import ConfigError, one_line

#: Exceptions reported as configuration errors (exit code 2).
CONFIG_ERRORS: tuple[type[BaseException], ...] = (ConfigError, HydraException, OmegaConfBaseException)

_state: dict[str, Any] = {"task_started": False, "sweep_failure": None, "in_cli": False, "config_error": None,
                          "new_sweep_dir": None}


def mark_task_started() -> None:
    """Called by the task function: from now on an ``OSError`` is not about the run dir."""
    _state["task_started"] = True


@contextmanager
def config_errors_to_cli() -> Iterator[None]:
    """Inside a task function run by :func:`run_cli`: a configuration error is handed to :func:`run_cli`
    instead of being raised through Hydra (which would print a line of its own first), so that the user
    sees one line. Outside :func:`run_cli` (a test calling the task) it is raised as usual."""
    try:
        yield
    except CONFIG_ERRORS as err:
        if not _state["in_cli"]:
            raise
        _state["config_error"] = err


def report_sweep_failure(message: str) -> None:
    """Called at the end of a multirun in which jobs failed: :func:`run_cli` then exits with code 1.

    (Hydra turns exceptions raised by its callbacks into warnings, so the callback reports instead.)
    """
    _state["sweep_failure"] = message


def note_sweep_dir(sweep_dir: Path) -> None:
    """Called at the start of a multirun, before the sweeper creates ``sweep_dir``: if the sweep stops on a
    config error before any job starts, :func:`run_cli` removes the folder it created (it holds only
    Hydra's ``multirun.yaml``), so that a typo leaves nothing behind."""
    _state["new_sweep_dir"] = None if sweep_dir.exists() else sweep_dir


def _remove_empty_sweep_dir() -> None:
    sweep_dir = _state["new_sweep_dir"]
    if _state["task_started"] or sweep_dir is None or not sweep_dir.is_dir():
        return
    if {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
        for path in sweep_dir.iterdir():
            path.unlink()
        sweep_dir.rmdir()


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
    _state.update(task_started=False, sweep_failure=None, in_cli=True, config_error=None, new_sweep_dir=None)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise instead of printing; we print one line
    try:
        entry()
        if _state["config_error"] is not None:
            raise _state["config_error"]
    except CONFIG_ERRORS as err:
        _remove_empty_sweep_dir()
        _fail(prog, _better_override_message(prog, str(err)) or (one_line(err) + _plugin_hint(str(err))), code=2)
    except OSError as err:
        if _state["task_started"]:
            raise
        _fail(prog, f"cannot create the run directory ({err}); set hydra.run.dir / hydra.sweep.dir or "
                    "paths.log_dir to a writable folder", code=2)
    finally:
        _state.update(in_cli=False, config_error=None)
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_full_error
    if _state["sweep_failure"]:
        _fail(prog, _state["sweep_failure"], code=1)


def _better_override_message(prog: str, message: str) -> str | None:
    """Hydra's "Could not override 'x.y'" for a key nothing would read if added: the nearest known key
    instead of Hydra's ``+x.y`` hint (see :mod:`lsa_train.app.overrides.added`)."""
    if "Could not override" not in message:
        return None
    from lsa_train.app.overrides import PROGRAM_CONFIGS, suggest_for_failed_override

    overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    return suggest_for_failed_override(PROGRAM_CONFIGS.get(prog, ""), overrides, message)


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
