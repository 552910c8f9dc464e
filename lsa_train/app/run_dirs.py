"""Where the apps write: OmegaConf resolvers that place an evaluation, an analysis or a resumed training
next to the run its checkpoint belongs to.

Paths are taken as given (symlinks are not followed): a checkpoint symlinked to a file outside the run
folder its path names gets the default output folder here and is refused by the app
(:func:`lsa_train.trust.check_checkpoint_link`); a run folder holding a directory symlink or a symlink
out of it is refused before Hydra writes into it (:func:`lsa_train.writes.check_run_folder_links`).
Light on purpose (no torch): registered on import of
``lsa_train.conf``, before Hydra composes anything.

A training run dir (made by ``lsa-train``) looks like::

    <run>/.hydra/config.yaml                  the composed config of the run
    <run>/.hydra/resumes/<date>_<time>/       one folder per resume: config.yaml (the effective config)
                                              and overrides.yaml (that command line's overrides)
    <run>/checkpoints/last.ckpt               Lightning checkpoints
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lsa_train.trust import CHECKPOINT_DIR, escapes_run_folder, run_folder_of
from lsa_train.writes import check_run_folder_links

#: The run's composed config, relative to the run dir.
RUN_CONFIG = Path(".hydra") / "config.yaml"
#: Hydra's record of the run (group choices), relative to the run dir.
HYDRA_CONFIG = Path(".hydra") / "hydra.yaml"
#: One folder per resume, relative to the run dir.
RESUMES_DIR = Path(".hydra") / "resumes"
#: Resolver names.
RUN_SUBDIR_RESOLVER = "lsa_run_subdir"
RESUME_DIR_RESOLVER = "lsa_resume_run_dir"
HYDRA_SUBDIR_RESOLVER = "lsa_hydra_subdir"


def checkpoint_run_dir(ckpt_path: Any) -> Path | None:
    """``<run>`` when ``ckpt_path`` is an existing ``<run>/checkpoints/<file>`` of a run with a saved
    config, as given and not a symlink out of it; else ``None``."""
    if ckpt_path is None or str(ckpt_path).strip() == "":
        return None
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file() or path.parent.name != CHECKPOINT_DIR or escapes_run_folder(path):
        return None
    run = run_folder_of(path)
    if not (run / RUN_CONFIG).is_file():
        return None
    check_run_folder_links(run)  # before Hydra opens <run>/train.log or an app writes into the run
    return run


def run_subdir(ckpt_path: Any, subdir: str, fallback: str) -> str:
    """``<train run>/<subdir>`` for a checkpoint of a run (see :func:`checkpoint_run_dir`), else
    ``fallback`` (``hydra.run.dir`` of ``evaluate.yaml`` and ``analyze.yaml``)."""
    if ckpt_path is None:
        return str(fallback)
    path = Path(str(ckpt_path)).expanduser()
    if path.is_file() and path.parent.name == CHECKPOINT_DIR and not escapes_run_folder(path):
        check_run_folder_links(run_folder_of(path))  # before Hydra opens <run>/<subdir>/<app>.log
        return str(run_folder_of(path) / subdir)
    return str(fallback)


def resume_run_dir(ckpt_path: Any, fallback: str) -> str:
    """The run dir of a resumed training: the run of ``ckpt_path`` (it keeps writing there), else
    ``fallback`` (a new run dir)."""
    run = checkpoint_run_dir(ckpt_path)
    return str(run) if run is not None else str(fallback)


def hydra_subdir(ckpt_path: Any) -> str | None:
    """Hydra's ``output_subdir``: ``.hydra`` for a new run; ``None`` (Hydra writes no config) when resuming
    a run, whose ``.hydra/config.yaml`` must stay as it was: the app records the resume itself."""
    return None if checkpoint_run_dir(ckpt_path) is not None else ".hydra"


def register_resolvers() -> None:
    """Registers the resolvers of this module (idempotent)."""
    for name, function in (
        (RUN_SUBDIR_RESOLVER, run_subdir),
        (RESUME_DIR_RESOLVER, resume_run_dir),
        (HYDRA_SUBDIR_RESOLVER, hydra_subdir),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
