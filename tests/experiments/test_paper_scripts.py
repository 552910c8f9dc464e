"""Smoke tests of the paper-reproduction scripts in ``experiments/paper`` (quick mode, seconds on a CPU)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

PAPER_DIR = Path(__file__).resolve().parents[2] / "experiments" / "paper"
sys.path.insert(0, str(PAPER_DIR))

import make_tables  # noqa: E402
import run_digits  # noqa: E402
import run_moons  # noqa: E402

FGSM_HEADERS = [f"FGSM {e}" for e in make_tables.EPS_KEYS]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Runs ``run_moons.py --quick`` once and renders its tables; returns ``(results dir, RESULTS.md)``."""
    root = tmp_path_factory.mktemp("paper")
    results = root / "results"
    threads = torch.get_num_threads()
    try:
        run_moons.main(["--quick", "--out", str(results), "--seeds", "7"])
    finally:
        torch.set_num_threads(threads)  # the script sets 1 thread for the whole process
    md = make_tables.main(["--results", str(results), "--md", str(root / "RESULTS.md")])
    return results, md


def _table(md_text: str, title: str) -> list[dict[str, str]]:
    """The Markdown table right after the heading ``title``, as a list of ``{header: cell}`` rows."""
    lines = md_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and title in line)
    rows = [line for line in lines[start + 1 :] if line.startswith("|")]
    table: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    assert rows, f"no table after {title!r}"
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def test_quick_moons_writes_raw_json(quick_results: tuple[Path, Path]) -> None:
    results, _ = quick_results
    files = sorted((results / "raw").glob("moons__*.json"))
    assert [f.name for f in files] == ["moons__AT-PGD-LR-L2_lam1__s7.json", "moons__AT-PGD__s7.json"]
    record: dict[str, Any] = json.loads(files[0].read_text())
    assert record["seed"] == 7 and record["config"] == {"base": "pgd", "lr": "L2", "lam": 1.0}
    metrics = record["metrics"]
    assert set(metrics["fgsm"]) == set(make_tables.EPS_KEYS)
    assert all(0.0 <= acc <= 1.0 for acc in metrics["fgsm"].values())
    assert metrics["fgsm"]["0"] == metrics["clean"]  # eps 0 on the same samples
    assert metrics["rg"] == pytest.approx(100 * sum(metrics["fgsm"].values()))
    assert all(acc <= metrics["clean"] for acc in metrics["pgd"].values())
    assert set(metrics["pgd"]) == {"0.1", "0.2"}
    assert metrics["autoattack"]["attacks"] == ["apgd-ce"]
    assert record["mvl"] == ["act3"]  # LR-L2: the third activation probe of model A
    meta = json.loads((results / "meta_moons_all.json").read_text())
    assert meta["seeds"] == [7] and meta["machine"]["torch"]


def test_make_tables_writes_expected_sections(quick_results: tuple[Path, Path]) -> None:
    results, md = quick_results
    text = md.read_text()
    for heading in (
        "## Moons, model A (Table 2 analog)",
        "### Table M1: our results",
        "### Table M2: the paper's Table 2",
        "### Table M3: LR minus its base",
        "### Table M5: gradient-masking signs",
        "## Digits 8x8, model B (Table 3 analog)",
        "## Setup (commands, configs, machine, wall time)",
    ):
        assert heading in text
    header = "| training | seeds | " + " | ".join(FGSM_HEADERS) + " | R&G | PGD-20 0.1 | PGD-20 0.2 | AutoAttack |"
    assert header in text
    rows = _table(text, "Table M1")
    assert [r["training"] for r in rows] == ["AT-PGD", "AT-PGD-LR-L2"]
    assert (results / "moons_fgsm_sweep.png").stat().st_size > 0


def test_rg_column_is_sum_of_fgsm_columns(quick_results: tuple[Path, Path]) -> None:
    results, md = quick_results
    for row in _table(md.read_text(), "Table M1"):
        fgsm = [float(row[h].split(" ± ")[0]) for h in FGSM_HEADERS]
        rg = float(row["R&G"].split(" ± ")[0])
        assert rg == pytest.approx(sum(fgsm), abs=0.05 * len(fgsm) + 1e-9)  # cells are rounded to 0.1
    groups = make_tables.group_runs(make_tables.load_records(results), "moons")
    for row in make_tables.table_rows(groups, make_tables.ordered_ids(groups)):
        stats = row["stats"]
        assert stats["rg"][0] == pytest.approx(sum(stats[f"fgsm_{k}"][0] for k in make_tables.EPS_KEYS))


def _fake(run_id: str, seed: int, clean: float) -> dict[str, Any]:
    fgsm = dict.fromkeys(make_tables.EPS_KEYS, clean)
    return {
        "dataset": "moons",
        "run_id": run_id,
        "name": run_id.split("_lam")[0],
        "seed": seed,
        "metrics": {"fgsm": fgsm, "rg": 100 * sum(fgsm.values()), "pgd": {"0.1": clean}},
    }


def test_paired_diff_pairs_by_seed() -> None:
    base = [_fake("AT-PGD", s, c) for s, c in ((0, 0.80), (1, 0.70), (2, 0.90))]
    lr = [_fake("AT-PGD-LR-L2_lam1", s, c) for s, c in ((2, 0.92), (0, 0.83), (1, 0.71))]
    diff = make_tables.paired_diff(lr, base, "fgsm_0")
    assert diff["n"] == 3
    assert diff["mean"] == pytest.approx(2.0)
    assert diff["std"] == pytest.approx(1.0)
    assert diff["t"] == pytest.approx(2.0 / (1.0 / math.sqrt(3)))
    assert make_tables.lr_pairs(["AT-PGD", "AT-PGD-LR-L2_lam1", "AT-FGSM-LR-L2_lam1"]) == [
        ("AT-PGD-LR-L2_lam1", "AT-PGD")
    ]


def test_config_lists() -> None:
    names = [c.run_id for c in run_moons.main_configs()]
    assert names[:5] == ["Normal", "AT-FGSM", "AT-PGD", "AT-TRADES", "AT-FAST"]
    assert "AT-TRADES-LR-L2_lam1" in names and "AT-PGD-LR-L0_lam1" in names and "AT-FAST-LR-L0_lam1" not in names
    assert len(run_moons.main_configs(full=True)) == 5 + 4 * 4
    assert [c.run_id for c in run_digits.configs()] == ["Normal", "AT-APGD", "AT-APGD-LR-L0_lam1"]
