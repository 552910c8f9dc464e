"""Shared helpers for the benchmarks: machine facts, RSS, and RESULTS.md sections.

Each benchmark owns one section of ``RESULTS.md``, delimited by HTML comments, and
rewrites only that section, so benchmarks can run alone or all together.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_TITLE = "# Benchmarks\n\nRatios are measured in one run on one machine; every section names its command.\n"


def machine() -> str:
    import torch  # here, not at the top: gpu_check.py's step processes that only run commands skip it

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def rss_mb() -> float:
    """Current resident set size of this process, in MiB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replaces (or appends) the section ``name`` of ``path`` (RESULTS.md) with ``body`` plus provenance."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- bench:{name} -->\n{body.strip()}\n\n"
        f"_Command: `{command_line()}`; machine: {machine()}; date: {stamp}._\n<!-- /bench:{name} -->"
    )
    text = path.read_text() if path.exists() else _TITLE
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
