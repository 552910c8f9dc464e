"""Issue 24's doors, tried as an attacker would (a run folder or checkpoint handed to a user), through the real
programs in subprocesses: a foreign run's config is parsed as data (no resolver, no program-naming key), a
checkpoint's callback state cannot delete or write outside the run, and a run folder with symlinks out of it
is not written into. Each refusal exits 2 with one line and leaves no marker; the deletion case trains on
and keeps the victim folder, saying what it dropped."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hostile import PickleBomb, edit_run_config, write_marker_module, write_run_folder
from test_hostile_runs import PROGRAMS, _run

SECRET = "s3cr3t-value-of-the-user"


def _cases(tmp: Path) -> dict[str, tuple[str, list[str], Path, str]]:
    """``name: (entry point, arguments, marker, text the error line must hold)``."""
    cases: dict[str, tuple[str, list[str], Path, str]] = {}
    marker = tmp / "marker_resolver"
    target = write_marker_module(tmp / "modules", marker, name="evil_resolver")
    # a _target_ made by a resolver, hidden in a plain setting (and behind oc.select's default)
    run = tmp / "resolver"
    ckpt = write_run_folder(run)
    edit_run_config(run, **{"data.num_workers": "${oc.create:{_target_:" + target + "}}"})
    for entry in ("train", "evaluate", "analyze"):
        cases[f"resolver_{entry}"] = (entry, [f"ckpt_path={ckpt}"], marker, "interpolation")
    run = tmp / "select"
    ckpt = write_run_folder(run)
    edit_run_config(run, **{"data.batch_size": "${oc.select:nothing,${oc.create:{_target_:" + target + "}}}"})
    cases["select_evaluate"] = ("evaluate", [f"ckpt_path={ckpt}"], marker, "interpolation")
    # an allowed builder with an attacker's argument: timm's checkpoint_path unpickles
    run = tmp / "timm_kwargs"
    ckpt = write_run_folder(run)
    bomb_marker = tmp / "marker_pickle"
    torch.save({"payload": PickleBomb(bomb_marker)}, tmp / "bomb.pth")
    edit_run_config(run, **{"model.checkpoint_path": str(tmp / "bomb.pth")})
    cases["builder_kwargs_evaluate"] = ("evaluate", [f"ckpt_path={ckpt}"], bomb_marker, "model.checkpoint_path")
    # torch.compile options that name a program (inductor runs cpp.cxx)
    run = tmp / "compile"
    ckpt = write_run_folder(run)
    compile_marker = tmp / "marker_compile"
    edit_run_config(run, **{"module.compile_model": {"options": {"cpp.cxx": f"sh -c 'touch {compile_marker}' x"}}})
    cases["compile_options_train"] = ("train", [f"ckpt_path={ckpt}"], compile_marker, "module.compile_model")
    # writes outside the run: a logger name, a version, a filename template, a seed-dependent dirpath
    for name, values, needle in (
        ("logger_name", {"logger.csv.name": str(tmp / "outside_logs")}, "logger.csv.name"),
        ("logger_version", {"logger.csv.version": "../../.."}, "logger.csv.version"),
        ("filename_spec", {"callbacks.last_checkpoint.filename": "{epoch:c}{epoch:c}/x"}, "filename"),
        ("seed_dirpath", {"callbacks.last_checkpoint.dirpath": "${oc.env:PL_GLOBAL_SEED,.}"}, "dirpath"),
    ):
        run = tmp / name
        ckpt = write_run_folder(run)
        edit_run_config(run, **values)
        cases[f"{name}_train"] = ("train", [f"ckpt_path={ckpt}"], tmp / "outside_logs", needle)
    # the environment copied into the run's records
    run = tmp / "env_leak"
    ckpt = write_run_folder(run)
    edit_run_config(run, **{"tags": ["${oc.env:LSA_TEST_SECRET,none}"]})
    cases["env_leak_train"] = ("train", [f"ckpt_path={ckpt}"], tmp / "no_marker", "interpolation")
    # symlinks in the run folder that an app writes through
    for name, link, entry in (("log_link", "train.log", "train"), ("resumes_link", ".hydra/resumes", "train"),
                              ("eval_link", "eval", "evaluate"), ("analysis_link", "analysis", "analyze")):
        run = tmp / name
        ckpt = write_run_folder(run)
        outside = tmp / f"{name}_target"
        outside.mkdir()
        (run / link).symlink_to(outside if link != "train.log" else outside / "victim.log")
        cases[name] = (entry, [f"ckpt_path={ckpt}"], outside / "victim.log" if link == "train.log" else outside / "x",
                       "symlink")
    return cases


@pytest.fixture(scope="module")
def foreign_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("foreign")
    cases = _cases(tmp)
    work = tmp / "work"
    work.mkdir()
    os.environ["LSA_TEST_SECRET"] = SECRET

    def run(name: str) -> tuple[str, tuple]:
        entry, args, marker, needle = cases[name]
        return name, (_run(entry, [*args, "trainer.max_epochs=2"] if entry == "train" else args, work,
                           tmp / "modules"), marker, needle, entry)

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            return dict(pool.map(run, cases)), tmp
    finally:
        os.environ.pop("LSA_TEST_SECRET", None)


CASES = [*(f"resolver_{e}" for e in ("train", "evaluate", "analyze")), "select_evaluate", "builder_kwargs_evaluate",
         "compile_options_train", "logger_name_train", "logger_version_train", "filename_spec_train",
         "seed_dirpath_train", "env_leak_train", "log_link", "resumes_link", "eval_link", "analysis_link"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_foreign_run_is_data_one_line_and_nothing_runs_or_is_written(foreign_runs, case: str) -> None:
    results, tmp = foreign_runs
    proc, marker, needle, entry = results[case]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"{PROGRAMS[entry]}: error: ") and needle in lines[0], lines
    assert not marker.exists()
    assert not (tmp / "outside_logs").exists()
    for target in tmp.glob("*_link_target"):
        assert not any(target.iterdir()), list(target.iterdir())
    run = tmp / case.removesuffix(f"_{entry}") if case.endswith(entry) else tmp / case
    if run.is_dir():
        resumes = run / ".hydra" / "resumes"
        assert not (run / "metrics.json").exists() and (resumes.is_symlink() or not resumes.exists())
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    leaked = [p for p in tmp.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".yaml", ".csv", ".log")
              and SECRET in p.read_text(errors="replace")]
    assert not leaked


@pytest.mark.slow
def test_a_checkpoint_cannot_make_a_resume_delete_a_folder(tmp_path: Path) -> None:
    """A ModelCheckpoint state naming ``local://<victim>`` as its best file: Lightning would delete the victim
    when the resumed epoch saves; the guard drops the path, the run trains on and the summary says so."""
    work = tmp_path / "work"
    work.mkdir()
    run = tmp_path / "run"
    first = _run("train", ["trainer.max_epochs=1", "callbacks=last_checkpoint", f"hydra.run.dir={run}"], work, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious.txt").write_text("keep me")
    checkpoint = torch.load(ckpt, weights_only=True)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("ModelCheckpoint")]
    state = {"best_model_path": f"local://{victim}", "best_k_models": {f"local://{victim}": 0.0},
             "kth_best_model_path": f"local://{victim}", "last_model_path": str(victim)}
    checkpoint["callbacks"][key].update(state)
    torch.save(checkpoint, ckpt)
    proc = _run("train", [f"ckpt_path={ckpt}", "trainer.max_epochs=2"], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (victim / "sub" / "precious.txt").read_text() == "keep me", proc.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert any("dropped" in note and str(victim) in note for note in summary["notes"]), summary["notes"]
    shutil.rmtree(victim)
