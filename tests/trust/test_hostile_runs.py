"""Each door of the trust boundary, tried with a hostile artifact through every entry point that reaches it,
as a user would meet it (a subprocess): exit code 2, one line on stderr, and no marker file written.

Doors: a saved run config that names a foreign ``_target_`` (here a function of a temp module that writes
a marker, called through ``_args_``); a saved ``trust_checkpoint: true`` with a pickle that runs a command
as ``model.checkpoint``; a TorchScript file whose ``__setstate__`` writes a marker; a checkpoint symlinked
out of its run folder; a saved config that sends a resume's checkpoints out of the run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hostile import PickleBomb, edit_run_config, write_marker_module, write_run_folder, write_torchscript_bomb

ENTRY_POINTS = {"train": "lsa_train", "evaluate": "lsa_train.app.evaluate", "analyze": "lsa_train.app.analyze"}
PROGRAMS = {"train": "lsa-train", "evaluate": "lsa-evaluate", "analyze": "lsa-analyze"}


def _run(entry: str, args: list[str], cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(pythonpath))
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", ENTRY_POINTS[entry], *args]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:  # e.g. a door left open starts training: this case fails, not the others
        return subprocess.CompletedProcess(command, -9, "", "timed out after 180 s")


def _cases(tmp: Path) -> dict[str, tuple[str, list[str], Path, str]]:
    """``name: (entry point, arguments, marker, text the error line must hold)``, artifacts built in ``tmp``."""
    cases: dict[str, tuple[str, list[str], Path, str]] = {}
    # 1. a foreign _target_ in the saved config (called with _args_, as sympy.sympify would be)
    target_run = tmp / "foreign_target"
    ckpt = write_run_folder(target_run)
    marker = tmp / "marker_target"
    target = write_marker_module(tmp / "modules", marker)
    edit_run_config(target_run, **{"data": {"_target_": target, "_args_": ["print('hello')"]}})
    for entry in ENTRY_POINTS:
        cases[f"target_{entry}"] = (entry, [f"ckpt_path={ckpt}"], marker, f"data._target_={target}")
    # 2. trust_checkpoint: true read from the run, with a pickle bomb as model.checkpoint
    trust_run = tmp / "saved_trust"
    ckpt = write_run_folder(trust_run)
    marker = tmp / "marker_trust"
    torch.save({"state_dict": {}, "payload": PickleBomb(marker)}, tmp / "bomb.pt")
    edit_run_config(trust_run, **{"trust_checkpoint": True, "model.checkpoint": str(tmp / "bomb.pt")})
    for entry in ENTRY_POINTS:
        cases[f"saved_trust_{entry}"] = (entry, [f"ckpt_path={ckpt}"], marker, "add trust_checkpoint=true")
    # 3. TorchScript whose __setstate__ writes a file: as ckpt_path, as model.checkpoint, in a run's config
    marker = tmp / "marker_script"
    script_run = tmp / "script_run"
    write_run_folder(script_run)
    script = write_torchscript_bomb(script_run / "checkpoints" / "script.ckpt", marker)
    cases["script_ckpt_train"] = ("train", [f"ckpt_path={script}"], marker, "TorchScript archive")
    cases["script_weights_analyze"] = ("analyze", ["model=cnn_b", "data=digits", f"model.checkpoint={script}",
                                                   "eps=0.1"], marker, "TorchScript archive")
    pointing_run = tmp / "points_at_script"
    ckpt = write_run_folder(pointing_run)
    edit_run_config(pointing_run, **{"model.checkpoint": str(script)})
    cases["script_in_run_evaluate"] = ("evaluate", [f"ckpt_path={ckpt}"], marker, "TorchScript archive")
    # 4. a checkpoint symlinked out of the run folder its path names
    victim = tmp / "victim"
    real = write_run_folder(victim)
    linked = tmp / "linked_run"
    write_run_folder(linked).unlink()
    (linked / "checkpoints" / "last.ckpt").symlink_to(real)
    for entry in ENTRY_POINTS:
        cases[f"symlink_{entry}"] = (entry, [f"ckpt_path={linked / 'checkpoints' / 'last.ckpt'}"],
                                     victim / "eval", "outside the run folder")
    # 5. a resume whose saved config sends its checkpoints outside the run folder
    outside_run = tmp / "writes_outside"
    ckpt = write_run_folder(outside_run)
    edit_run_config(outside_run, **{"callbacks.last_checkpoint.dirpath": str(tmp / "outside")})
    cases["outside_train"] = ("train", [f"ckpt_path={ckpt}"], tmp / "outside", "callbacks.last_checkpoint.dirpath")
    return cases


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, Path, str,
                                                                              str, Path]]:
    tmp = tmp_path_factory.mktemp("hostile")
    cases = _cases(tmp)
    work = tmp / "work"
    work.mkdir()

    def run(name: str) -> tuple[str, tuple[subprocess.CompletedProcess, Path, str, str, Path]]:
        entry, args, marker, needle = cases[name]
        out = tmp / "out" / name
        return name, (_run(entry, [*args, f"hydra.run.dir={out}"] if name.startswith("script_weights") else args,
                           work, tmp / "modules"), marker, needle, entry, tmp)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, cases))


CASES = [f"{door}_{entry}" for door in ("target", "saved_trust", "symlink") for entry in ENTRY_POINTS] + [
    "script_ckpt_train", "script_weights_analyze", "script_in_run_evaluate", "outside_train"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_hostile_artifact_stops_with_one_line_and_runs_nothing(hostile_runs, case: str) -> None:
    proc, marker, needle, entry, tmp = hostile_runs[case]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"{PROGRAMS[entry]}: error: ") and needle in lines[0], lines
    assert not marker.exists()
    for folder in ("victim", "linked_run"):  # the symlink's target folder gets no eval/analysis output either
        for sub in ("eval", "analysis"):
            assert not (tmp / folder / sub).exists(), (folder, sub)
