"""Hydra callback writing one CSV row per multirun job (its final metrics, or ``failed``).

Registered in ``conf/hydra/default.yaml`` under ``hydra.callbacks.sweep_summary``. At the end of a
multirun it scans the sweep dir for job dirs (folders with ``.hydra/``) and reads each job's
``metrics.json``. A job without one (it crashed, or was killed) is listed with status ``failed``;
the other jobs are still summarized. Works with any launcher (the jobs may run in other processes).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lsa_train.app.cli import note_sweep_dir, report_sweep_failure
from lsa_train.utils.io import atomic_write_text

log = logging.getLogger(__name__)

#: Columns in front of the metric columns.
LEAD_COLUMNS = ("job", "status", "overrides")
#: Summary keys copied next to the metrics.
SUMMARY_KEYS = ("acc_clean", "acc_pgd", "rg_score")


class SweepSummaryCallback(Callback):
    """Writes ``<sweep dir>/<filename>`` at ``on_multirun_end``.

    Args:
        filename: Name of the CSV inside the sweep dir.
        fail_on_job_error: When a job failed, make ``lsa-train`` exit with code 1 after the summary is
            written (see :func:`lsa_train.app.cli.report_sweep_failure`).
    """

    def __init__(self, filename: str = "sweep_summary.csv", fail_on_job_error: bool = True) -> None:
        self.filename = filename
        self.fail_on_job_error = fail_on_job_error

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        note_sweep_dir(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect_jobs(sweep_dir)
        path = write_summary_csv(sweep_dir / self.filename, rows)
        failed = [row for row in rows if row["status"] != "completed"]
        log.info("sweep summary: %d jobs, %d failed -> %s", len(rows), len(failed), path)
        if failed:
            jobs = ", ".join(f"{row['job']} ({row.get('error') or 'failed'})" for row in failed)
            message = f"{len(failed)} of {len(rows)} sweep jobs failed: {jobs}; summary in {path}"
            log.error(message)
            if self.fail_on_job_error:
                report_sweep_failure(message)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir under ``sweep_dir``, ordered by job number; ``overrides`` lists the overrides
    that differ between the jobs."""
    rows = []
    for hydra_dir in sweep_dir.rglob(".hydra"):
        job_dir = hydra_dir.parent
        if job_dir == sweep_dir or not (hydra_dir / "config.yaml").is_file():
            continue
        rows.append(_job_row(sweep_dir, job_dir))
    rows.sort(key=lambda row: (_job_number(row["job"]), str(row["job"])))
    # The overrides column shows what varies between jobs (the swept values); every job's full
    # list stays in its .hydra/overrides.yaml.
    common = set.intersection(*(set(row["overrides"]) for row in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in common)
    return rows


def _job_number(job: Any) -> int:
    try:
        return int(job)
    except (TypeError, ValueError):
        return 1 << 30


def _job_row(sweep_dir: Path, job_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"job": _job_id(sweep_dir, job_dir), "overrides": _overrides(job_dir)}
    metrics_file = job_dir / "metrics.json"
    try:
        summary = json.loads(metrics_file.read_text())
    except FileNotFoundError:
        summary = {"status": "failed", "error": "no metrics.json (the job crashed or was killed)"}
    except (OSError, ValueError) as err:
        summary = {"status": "failed", "error": f"unreadable metrics.json ({err})"}
    row["status"] = summary.get("status", "failed")
    for key in SUMMARY_KEYS:
        if summary.get(key) is not None:
            row[key] = summary[key]
    for key, value in (summary.get("metrics") or {}).items():
        row[key] = value
    if summary.get("mvl") is not None:
        row["mvl"] = " ".join(summary["mvl"])
    if summary.get("error"):
        row["error"] = summary["error"]
    row["run_dir"] = str(job_dir)
    return row


def _job_id(sweep_dir: Path, job_dir: Path) -> str:
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    try:
        num = OmegaConf.load(hydra_file).hydra.job.get("num")
        if num is not None:
            return str(num)
    except Exception:  # unreadable hydra.yaml: fall back to the folder name
        pass
    return str(job_dir.relative_to(sweep_dir))


def _overrides(job_dir: Path) -> list[str]:
    try:
        return [str(item) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    except Exception:  # unreadable overrides.yaml: no overrides shown
        return []


def write_summary_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Writes the rows: lead columns, then the sorted union of metric columns, then ``run_dir``/``error``."""
    tail = ["mvl", "run_dir", "error"]
    middle = sorted({key for row in rows for key in row} - set(LEAD_COLUMNS) - set(tail))
    columns = [*LEAD_COLUMNS, *middle, *tail]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
