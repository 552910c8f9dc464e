"""One write door: every path a training run writes or deletes stays inside its run folder.

Paths come from configs (``dirpath``, ``save_dir``, ``name``/``version`` of a logger, filename templates),
from checkpoints (a resumed ``ModelCheckpoint`` remembers the files it wrote and deletes the old ones) and
from the run folder itself (a symlinked ``train.log`` or ``eval/`` would send writes elsewhere). They are
checked here, after formatting and resolution, right before use:

* :func:`check_write_path`: inside the run folder, with no symlinked component below it.
* :func:`check_filename_template`: ``ModelCheckpoint`` filename templates use only ``{name}``,
  ``{name:0Nd}`` and ``{name:.Nf}`` fields (``{epoch:c}`` formats to ``.``; ``../`` follows).
* :func:`check_run_folder_links`: a run folder that an app writes into holds no directory symlink and no
  symlink leading out of it; checked before Hydra opens ``train.log`` (by the run-dir resolvers).
* :class:`lsa_train.training.guards.GuardedCheckpointIO`: Lightning's checkpoint writer and remover, refusing
  paths outside the run folder at the moment of writing or deleting.
* :func:`check_trainer_writes`: the folders of a built trainer's callbacks and loggers (an MLflow store given as a
  ``file:`` or ``sqlite:`` URI and its artifact location, a W&B run folder); :func:`remote_logger_notes` names
  the loggers that send to a server (an MLflow tracking server, W&B online) for the run summary.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lsa_train.trust import UntrustedError

#: A format field a checkpoint filename may use: ``{epoch}``, ``{epoch:03d}``, ``{val/acc_pgd:.4f}``.
_FIELD = re.compile(r"\{[A-Za-z_][\w/.-]*(?::(?:0?\d{1,2}d|\.\d{1,2}f))?\}")
#: Entries a run-folder check looks at before giving up (a run folder holds a few hundred).
MAX_RUN_FOLDER_ENTRIES = 100_000


class WriteOutsideError(UntrustedError):
    """A run would write or delete outside its run folder."""


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(str(path)).expanduser()))


def check_write_path(path: str | Path, root: str | Path, what: str) -> Path:
    """``path`` (absolute, not resolved) when it lies inside ``root`` with no symlinked component below ``root``.

    Args:
        path: Where something will be written (a file or folder, existing or not).
        root: The run folder (the user's choice on the command line; itself may be a symlink).
        what: The setting that named it, for the message (``callbacks.last_checkpoint.dirpath``).

    Raises:
        WriteOutsideError: One line naming ``what``, the path and the run folder.
    """
    if "://" in str(path):
        raise WriteOutsideError(f"{what}='{path}' is a URL; a run writes only plain paths inside its run folder "
                                f"'{root}'")
    target, top = _absolute(path), _absolute(root)
    if not target.is_relative_to(top):
        raise WriteOutsideError(f"{what}='{path}' lies outside the run folder '{root}'; a run writes only inside it")
    current = top
    for part in target.relative_to(top).parts:
        current = current / part
        if current.is_symlink():
            raise WriteOutsideError(f"{what}='{path}' passes through the symlink '{current}' -> "
                                    f"'{os.readlink(current)}'; a run writes only into its own folders")
    return target


def check_filename_template(template: Any, what: str) -> None:
    """Refuses a checkpoint filename template with other than ``{name}``/``{name:0Nd}``/``{name:.Nf}`` fields,
    a path separator outside fields, or ``..``.

    Raises:
        WriteOutsideError: One line naming ``what`` and the template.
    """
    if template is None:
        return
    text = str(template)
    rest = _FIELD.sub("0", text)
    if "{" in rest or "}" in rest or "/" in rest or "\\" in rest or ".." in text or text.startswith("~"):
        raise WriteOutsideError(
            f"{what}={text!r} is not a plain checkpoint filename: use a name with {{name}}, {{name:0Nd}} or "
            "{name:.Nf} fields only, e.g. 'epoch_{epoch:03d}'")


def check_run_folder_links(run_dir: str | Path) -> None:
    """Refuses a run folder holding a directory symlink, or a symlink leading out of it (an app would then
    write through it: ``train.log``, ``.hydra/resumes``, ``eval/``, ``analysis/``).

    Raises:
        WriteOutsideError: One line naming the link and its target.
    """
    top = _absolute(run_dir)
    inside = top.resolve()
    seen = 0
    for folder, dirs, files in os.walk(top, followlinks=False):
        for name in (*dirs, *files):
            seen += 1
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            target = path.resolve()
            if path.is_dir() or not target.is_relative_to(inside):
                raise WriteOutsideError(
                    f"the run folder '{run_dir}' holds the symlink '{path}' -> '{os.readlink(path)}'; an app writing "
                    "there would write through it, so nothing was written; copy the run folder without links")
        if seen > MAX_RUN_FOLDER_ENTRIES:
            raise WriteOutsideError(f"the run folder '{run_dir}' holds more than {MAX_RUN_FOLDER_ENTRIES} entries; "
                                    "is it a run folder?")


def check_trainer_writes(trainer: Any, run_dir: str | Path) -> None:
    """Checks where a built trainer's callbacks (``dirpath``, ``filename``) and loggers (``log_dir``,
    ``save_dir``) and the trainer itself (``default_root_dir``) would write, before anything is written.

    Raises:
        WriteOutsideError: The first path outside ``run_dir``, in one line.
    """
    check_write_path(trainer.default_root_dir, run_dir, "trainer.default_root_dir")
    for callback in trainer.callbacks:
        name = type(callback).__name__
        dirpath = getattr(callback, "dirpath", None)
        if dirpath is not None:
            check_write_path(dirpath, run_dir, f"{name}.dirpath")
        if hasattr(callback, "filename") and hasattr(callback, "format_checkpoint_name"):
            check_filename_template(callback.filename, f"{name}.filename")
    for logger in trainer.loggers:
        name = type(logger).__name__
        for attribute in ("save_dir", "log_dir"):
            value = getattr(logger, attribute, None)
            if isinstance(value, str | os.PathLike):
                check_write_path(value, run_dir, f"{name}.{attribute}")
        for what, path in _logger_local_stores(logger):
            check_write_path(path, run_dir, f"{name}.{what}")


def _logger_local_stores(logger: Any) -> list[tuple[str, str]]:
    """Local places an MLflow or W&B logger writes that ``save_dir`` does not show: an MLflow ``sqlite:`` store
    and artifact location, and the working directory of a W&B logger without ``save_dir``.

    Raises:
        WriteOutsideError: A W&B logger without ``save_dir`` (it would write into the working directory).
    """
    kind = type(logger).__name__
    if kind == "MLFlowLogger":
        stores = []
        uri = str(getattr(logger, "_tracking_uri", "") or "")
        if uri.startswith("sqlite:"):  # sqlite:///relative.db, sqlite:////absolute.db
            stores.append(("tracking_uri", uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri))
        location = getattr(logger, "_artifact_location", None)
        if location:  # a URL is refused by check_write_path: artifacts stay in the run folder
            stores.append(("artifact_location", str(location).removeprefix("file:")))
        return stores
    if kind == "WandbLogger" and getattr(logger, "save_dir", None) is None:
        raise WriteOutsideError(f"{kind} has no save_dir: W&B would write into the working directory; set "
                                "logger.<name>.save_dir=${paths.output_dir} (logger=wandb does)")
    return []


def remote_logger_notes(loggers: Any) -> list[str]:
    """Summary lines for loggers that send the run's metrics and config to a server rather than (only) into the
    run folder: MLflow with a tracking server, W&B with ``offline=false``."""
    notes = []
    for logger in loggers:
        kind = type(logger).__name__
        uri = str(getattr(logger, "_tracking_uri", "") or "")
        if kind == "MLFlowLogger" and not uri.startswith(("file:", "sqlite:")):
            notes.append(f"MLFlowLogger sends the run's metrics and config to the tracking server '{uri}', outside "
                         "the run folder (logger=mlflow alone keeps them in <run dir>/mlflow.db)")
        if kind == "WandbLogger" and not getattr(logger, "_offline", True):
            notes.append("WandbLogger sends the run's metrics and config to the W&B server (offline=false; "
                         "logger=wandb alone keeps them in <run dir>/wandb)")
    return notes
