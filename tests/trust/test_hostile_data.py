"""Hostile data handed to a user, tried through the real command line (a subprocess each): an expanded ``.pt``
(15 GiB of values in 2 KB), a ``.npz`` deflate bomb (2.5 GiB in 2.6 MB), an image folder with a symlink loop
and one with a class folder symlinked out of its root. Each run must stop before training with exit code 2
and one line on stderr naming the problem, within 60 s and 2 GiB of peak memory (the child's ``ru_maxrss``
from ``os.wait4``), writing nothing outside its temp dir (``HOME``, ``TMPDIR`` and the caches point there)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile_data import write_expanded_pt, write_npz_bomb, write_symlink_escape, write_symlink_loop

import lsa_train

ENTRY_POINTS = {"train": "lsa_train", "analyze": "lsa_train.app.analyze"}
PROGRAMS = {"train": "lsa-train", "analyze": "lsa-analyze"}
#: The checkout whose ``lsa_train`` this test imported: the children run the same code.
SOURCE_ROOT = Path(lsa_train.__file__).resolve().parents[1]
TIMEOUT_S = 60
MAX_RSS_KIB = 2 * 2**20  # 2 GiB

pytestmark = pytest.mark.skipif(not hasattr(os, "wait4"), reason="measures the child with os.wait4 (POSIX)")


@dataclass
class Outcome:
    returncode: int
    stderr: str
    max_rss_kib: int
    seconds: float
    inputs_before: set[Path]
    inputs_after: set[Path]
    work: Path


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


def _run(entry: str, args: list[str], inputs: Path, home: Path) -> Outcome:
    """Runs ``python -m <entry> <args>`` in ``home/work`` and waits with ``os.wait4`` for its exit code and
    peak resident memory (KiB on Linux); killed after ``TIMEOUT_S`` (return code -9)."""
    work = home / "work"
    for sub in ("work", "tmp", "cache", "mpl"):
        (home / sub).mkdir(parents=True)
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(SOURCE_ROOT), HOME=str(home), TMPDIR=str(home / "tmp"),
               XDG_CACHE_HOME=str(home / "cache"), MPLCONFIGDIR=str(home / "mpl"))
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("LSA_TRAIN_ROOT", None)
    before = _files(inputs)
    with open(home / "stdout", "w") as out, open(home / "stderr", "w") as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", ENTRY_POINTS[entry], *args], cwd=work, env=env,
                                stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > TIMEOUT_S:  # a hang (e.g. a walk round a loop) fails this case only
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Outcome(proc.returncode, (home / "stderr").read_text(), usage.ru_maxrss, seconds, before,
                   _files(inputs), work)


def _cases(tmp: Path) -> dict[str, tuple[str, list[str], Path, str]]:
    """``name: (entry point, arguments, input folder, text the error line must hold)``, inputs built in ``tmp``."""
    files = tmp / "files"
    files.mkdir()
    expanded = write_expanded_pt(files / "expanded.pt")
    bomb = write_npz_bomb(files / "bomb.npz")
    loop = write_symlink_loop(tmp / "loop")
    escape = write_symlink_escape(tmp / "escape", tmp / "elsewhere")
    expanded_error = "x is an expanded or overlapping view"
    bomb_error = "holds 2.54 GiB of arrays once decompressed"
    return {
        "expanded_train": ("train", ["data=tensors", f"data.path={expanded}", "trainer.max_epochs=1"], files,
                           expanded_error),
        "bomb_train": ("train", ["data=tensors", f"data.path={bomb}", "data.max_gib=1", "trainer.max_epochs=1"],
                       files, bomb_error),
        "loop_train": ("train", ["data=imagefolder", f"data.root={loop}", "trainer.max_epochs=1"], loop,
                       "a symlink loop"),
        "expanded_analyze": ("analyze", ["model=cnn_b", "data=tensors", f"data.path={expanded}", "eps=0.1"], files,
                             expanded_error),
        "bomb_analyze": ("analyze", ["model=cnn_b", "data=tensors", f"data.path={bomb}", "data.max_gib=1", "eps=0.1"],
                         files, bomb_error),
        "escape_analyze": ("analyze", ["model=cnn_b", "data=imagefolder", f"data.root={escape}", "eps=0.1"], escape,
                           "outside the image folder"),
    }


CASES = ["expanded_train", "bomb_train", "loop_train", "expanded_analyze", "bomb_analyze", "escape_analyze"]


@pytest.fixture(scope="module")
def hostile_data_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Outcome, str, str]]:
    tmp = tmp_path_factory.mktemp("hostile_data")
    cases = _cases(tmp)
    assert sorted(cases) == sorted(CASES)

    def run(name: str) -> tuple[str, tuple[Outcome, str, str]]:
        entry, args, inputs, needle = cases[name]
        return name, (_run(entry, args, inputs, tmp / "runs" / name), needle, entry)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_hostile_data_stops_with_one_line_in_bounded_time_and_memory(hostile_data_runs, case: str) -> None:
    outcome, needle, entry = hostile_data_runs[case]
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    print(f"{case}: exit {outcome.returncode}, {outcome.seconds:.1f} s, peak RSS {outcome.max_rss_kib / 2**10:.0f} MiB")
    assert outcome.returncode == 2, (outcome.returncode, outcome.seconds, outcome.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"{PROGRAMS[entry]}: error: data=") and needle in lines[0], lines
    assert outcome.seconds < TIMEOUT_S
    assert outcome.max_rss_kib < MAX_RSS_KIB, f"peak RSS {outcome.max_rss_kib / 2**20:.2f} GiB"
    assert outcome.inputs_after == outcome.inputs_before  # nothing written next to the hostile data
    assert not list(outcome.work.rglob("*.ckpt")) and not list(outcome.work.rglob("metrics*"))  # nothing trained
