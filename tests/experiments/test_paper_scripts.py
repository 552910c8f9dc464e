"""Smoke tests of the paper-reproduction scripts in ``experiments/paper`` (quick mode, seconds on a CPU)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

PAPER_DIR = Path(__file__).resolve().parents[2] / "experiments" / "paper"
sys.path.insert(0, str(PAPER_DIR))

import make_tables  # noqa: E402
import paper_common  # noqa: E402
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
    assert record["seed"] == 7 and record["config"] == {"base": "pgd", "lr": "L2", "lam": 1.0, "awp": 0.0,
                                                         "clip": "project", "measure": "relative_error",
                                                         "stop_clean_grad": False}
    assert set(record["git"]) == {"commit", "dirty"}  # None/None only outside a git checkout
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


def test_digits_bases_configs() -> None:
    assert [c.run_id for c in run_digits.base_configs()] == [
        "AT-PGD", "AT-PGD-LR-L0_lam1", "AT-PGD+AWP", "AT-PGD+AWP-LR-L0_lam1",
        "AT-MART", "AT-MART-LR-L0_lam1", "AT-TRADES+AWP", "AT-TRADES+AWP-LR-L0_lam1", "AT-TRADES",
    ]
    settings = paper_common.TrainSettings(model="mlp_a", epochs=1)
    module = paper_common.build_module(run_digits.base_configs()[7], settings, torch.nn.Linear(2, 2))
    assert module.base_loss_name == "trades" and module.awp is not None and module.awp.gamma == 5e-3
    assert module.mvl == ["0"]
    mart = paper_common.build_module(paper_common.RunConfig("mart"), settings, torch.nn.Linear(2, 2))
    assert mart.base_loss_name == "mart" and mart.awp is None and type(mart.attack).__name__ == "MARTAttack"


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_records_the_commit_and_a_dirty_flag(tmp_path: Path) -> None:
    assert paper_common.git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "lsa_train").mkdir()
    (tmp_path / "lsa_train" / "x.py").write_text("a = 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert paper_common.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "new_result.json").write_text("{}")  # untracked files (results) do not count
    assert paper_common.git_state(tmp_path)["dirty"] is False
    (tmp_path / "lsa_train" / "x.py").write_text("a = 2\n")
    assert paper_common.git_state(tmp_path) == {"commit": head, "dirty": True}


def _fake_digits(run_id: str, seed: int, pgd: float, commit: str = "abc") -> dict[str, Any]:
    record = _fake(run_id, seed, 0.9)
    record["dataset"] = "digits"
    record["metrics"]["pgd"] = {"0.2": pgd}
    record["metrics"]["n_test"] = 360
    record["metrics"]["autoattack"] = {
        "robust_accuracy": pgd - 0.05, "pgd_same_subset": pgd, "version": "custom", "eps": 0.2, "n_samples": 200,
        "attacks": ["apgd-ce"], "skipped": {},
    }
    record["settings"] = {"eps": 0.2, "epochs": 15, "attack_steps": 10, "trades_beta": 6.0, "mart_beta": 6.0}
    record["git"] = {"commit": commit, "dirty": False}
    return record


def test_digits_bases_section_pairs_each_defense_with_pgd_and_its_lr_row() -> None:
    records = [
        *(_fake_digits("AT-PGD", s, p) for s, p in ((0, 0.40), (1, 0.50))),
        *(_fake_digits("AT-MART", s, p) for s, p in ((0, 0.45), (1, 0.54))),
        *(_fake_digits("AT-MART-LR-L0_lam1", s, p) for s, p in ((1, 0.50),)),
        _fake_digits("AT-APGD", 0, 0.3),
    ]
    text = make_tables.digits_bases_section(records)
    assert "Table D8" in text and "Not run." in text  # no AWP rows here
    rows = _table(text, "Table D5")
    assert [(r["training"], r["seeds"]) for r in rows] == [("AT-PGD", "2"), ("AT-MART", "2"), ("AT-MART-LR-L0", "1")]
    assert rows[1]["PGD-20 0.2"] == "49.5 ± 6.4"
    against = _table(text, "Table D6")
    assert [(r["run"], r["reference"], r["seeds"]) for r in against] == [("AT-MART", "AT-PGD", "2")]
    assert against[0]["Δ PGD-20 0.2"] == "4.5 ± 0.7"
    lr = _table(text, "Table D7")
    assert [(r["LR run"], r["base"], r["seeds"], r["Δ PGD-20 0.2"]) for r in lr] == [
        ("AT-MART-LR-L0_lam1", "AT-MART", "1", "-4.0 ± 0.0")
    ]
    assert "AT-MART 2, AT-MART-LR-L0 1" in text and "commit of the runs: abc" in text
    main_rows = make_tables.digits_section(records)
    assert "AT-MART" not in main_rows and "| AT-APGD |" in main_rows


def test_resumed_grid_reruns_records_saved_with_other_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run is skipped only when its saved settings equal the grid's; otherwise it is replaced."""
    trained: list[tuple[str, int]] = []

    def fake_run_one(cfg: Any, settings: Any, make_dm: Any, seed: int) -> dict[str, Any]:
        trained.append((cfg.run_id, seed))
        settings_json = paper_common._jsonable(dataclasses.asdict(settings))
        return {"settings": settings_json, "metrics": {"clean": 0.5, "rg": 1.0, "pgd": {}}, "train_seconds": 0,
                "eval_seconds": 0}

    monkeypatch.setattr(paper_common, "run_one", fake_run_one)
    cfgs = [paper_common.RunConfig("pgd")]
    short = paper_common.TrainSettings(model="cnn_b", epochs=15)
    long = paper_common.TrainSettings(model="cnn_b", epochs=40)
    grid = dict(make_dm=None, out=tmp_path, command="test")
    paper_common.run_grid("digits", cfgs, [0, 1], short, **grid)
    assert trained == [("AT-PGD", 0), ("AT-PGD", 1)]
    paper_common.run_grid("digits", cfgs, [0, 1], short, **grid)  # same settings: nothing re-runs
    assert len(trained) == 2
    paper_common.run_grid("digits", cfgs, [0, 1], long, **grid)  # 40 epochs asked: both re-run
    assert trained[2:] == [("AT-PGD", 0), ("AT-PGD", 1)]
    saved = json.loads(paper_common.raw_path(tmp_path, "digits", cfgs[0], 1).read_text())
    assert saved["settings"]["epochs"] == 40


def test_masking_checks_use_the_evaluations_pgd_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks compare against a PGD accuracy measured with ``pgd_eval_steps``: they must use the same steps."""
    seen: dict[str, Any] = {}

    def fake_checks(model: Any, loader: Any, eps: float, **kwargs: Any) -> list[str]:
        seen.update(kwargs, eps=eps)
        return ["a warning"]

    monkeypatch.setattr(paper_common, "gradient_masking_checks", fake_checks)
    assert paper_common._masking(None, None, 0.2, {0.0: 1.0}, 0.5, pgd_steps=7) == ["a warning"]
    assert seen["pgd_steps"] == 7 and seen["pgd_acc"] == 0.5 and seen["eps"] == 0.2


def test_digits_bases_section_pairs_awp_with_the_same_base_without_it() -> None:
    records = [
        *(_fake_digits("AT-PGD", s, p) for s, p in ((0, 0.40), (1, 0.50))),
        *(_fake_digits("AT-PGD+AWP", s, p) for s, p in ((0, 0.43), (1, 0.52))),
        *(_fake_digits("AT-TRADES", s, p) for s, p in ((0, 0.50), (1, 0.60))),
        *(_fake_digits("AT-TRADES+AWP", s, p) for s, p in ((0, 0.49), (1, 0.57))),
    ]
    text = make_tables.digits_bases_section(records)
    awp = _table(text, "Table D8")
    assert [(r["run"], r["reference"], r["Δ PGD-20 0.2"]) for r in awp] == [
        ("AT-PGD+AWP", "AT-PGD", "2.5 ± 0.7"), ("AT-TRADES+AWP", "AT-TRADES", "-2.0 ± 1.4")
    ]
    assert [r["training"] for r in _table(text, "Table D5")] == ["AT-PGD", "AT-PGD+AWP", "AT-TRADES", "AT-TRADES+AWP"]


def test_provenance_names_each_commit_with_its_runs() -> None:
    records = [_fake_digits("AT-PGD", 0, 0.4, commit="a" * 40), _fake_digits("AT-PGD", 1, 0.5, commit="b" * 40)]
    records[1]["git"]["dirty"] = True
    unrecorded = _fake_digits("AT-MART", 0, 0.4)
    unrecorded["git"] = {"commit": None, "dirty": None}
    groups = make_tables.group_runs([*records, unrecorded], "digits")
    assert make_tables.provenance(groups, ["AT-PGD"]) == (
        "lsa_train commit of the runs: aaaaaaaaaa (1 run: AT-PGD/s0); bbbbbbbbbb (1 run: AT-PGD/s1) "
        "(1 run(s) from a dirty tree)."
    )
    assert make_tables.provenance(groups, ["AT-MART"]) == (
        "lsa_train commit of the runs: not recorded (0 run(s) from a dirty tree)."
    )


README = PAPER_DIR.parents[1] / "README.md"
#: README results column -> RESULTS.md column.
README_COLUMNS = {"clean": "FGSM 0", "R&G (FGSM sweep)": "R&G", "PGD-20 @0.1": "PGD-20 0.1",
                  "PGD-20 @0.2": "PGD-20 0.2", "AutoAttack @0.1": "AutoAttack", "AutoAttack @0.2": "AutoAttack",
                  "seeds": "seeds"}


def _markdown_tables(text: str) -> list[list[dict[str, str]]]:
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            header = [c.strip() for c in block[0].strip("|").split("|")]
            tables.append([dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in block[2:]])
            block = []
    return tables


def _same_when_rounded(shown: str, exact: str) -> bool:
    """Whether ``shown`` ("451 ± 37") is ``exact`` ("450.9 ± 37.4") rounded to ``shown``'s decimals."""
    if "±" not in shown:
        return shown == exact
    pairs = list(zip(shown.split(" ± "), exact.split(" ± "), strict=True))
    return all(abs(float(s) - float(e)) <= 0.5 * 10 ** -len(s.partition(".")[2]) + 1e-9 for s, e in pairs)


@pytest.mark.parametrize(("index", "source"), [(0, "Table M1"), (1, "Table D5")])
def test_readme_results_match_the_generated_tables(index: int, source: str) -> None:
    """The README's result rows are copies of experiments/paper/RESULTS.md; a re-run must update both."""
    readme = README.read_text()
    results_part = readme[readme.index("## Results"): readme.index("\n## ", readme.index("## Results") + 1)]
    readme_rows = _markdown_tables(results_part)[index]
    generated = {row["training"]: row for row in _table((PAPER_DIR / "RESULTS.md").read_text(), source)}
    assert readme_rows
    for row in readme_rows:
        assert row["training"] in generated, (row["training"], source)
        for column, value in row.items():
            if column in README_COLUMNS:
                expected = generated[row["training"]][README_COLUMNS[column]]
                assert _same_when_rounded(value, expected), (row["training"], column, value, expected)


def test_readme_adaptive_rows_match_table_a1() -> None:
    """The README's worst-case rows (issue 21) are copies of RESULTS.md's Table A1."""
    readme = README.read_text()
    results_part = readme[readme.index("## Results"): readme.index("\n## ", readme.index("## Results") + 1)]
    readme_rows = _markdown_tables(results_part)[2]
    generated = {(row["model"], row["with the term"]): row
                 for row in _table((PAPER_DIR / "RESULTS.md").read_text(), "Table A1")}
    assert len(readme_rows) >= 5
    for row in readme_rows:
        source = generated[(row["model"], row["with the term"])]
        for column, value in row.items():  # "base / LR" cells compare part by part
            parts = list(zip(value.split(" / "), source[column].split(" / "), strict=True))
            assert all(_same_when_rounded(a, b) for a, b in parts), (row["model"], row["with the term"], column)


def test_quick_adaptive_run_trains_both_runs_of_a_pair_and_tables_the_worst_case(tmp_path: Path) -> None:
    """``run_adaptive.py --quick`` on one pair: both networks saved, every attack in each record, the partner's
    network as transfer source, and the pair in the adaptive tables."""
    import adaptive_tables
    import run_adaptive

    threads = torch.get_num_threads()
    try:
        run_adaptive.main(["--part", "pairs", "--only", "AT-PGD-LR-L0_lam1", "--seeds", "3", "--epochs", "1",
                           "--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    models = sorted(p.name for p in (tmp_path / "adaptive" / "models").iterdir())
    assert models == ["cnn_b__AT-PGD-LR-L0_lam1__s3.pt", "cnn_b__AT-PGD__s3.pt"]
    base = json.loads((tmp_path / "raw_adaptive" / "digits__cnn_b__AT-PGD__s3.json").read_text())
    lr = json.loads((tmp_path / "raw_adaptive" / "digits__cnn_b__AT-PGD-LR-L0_lam1__s3.json").read_text())
    assert base["partner"] == "cnn_b__AT-PGD-LR-L0_lam1__s3" and lr["partner"] == "cnn_b__AT-PGD__s3"
    assert lr["feature_probes"] == lr["train"]["mvl"] == base["feature_probes"] == ["net.features.relu1"]
    for record in (base, lr):
        assert set(record["attacks"]) == {"pgd", "autoattack", "pgd_ce_restarts", "pgd_margin",
                                          "feature_pgd_kappa_10", "transfer"}
        assert record["worst_case_accuracy"] <= min(a["accuracy_on_common"] for a in record["attacks"].values())
        # weighted by the lambda (1) of the term attacked; a seed of its own, not PGD's
        assert record["attacks"]["feature_pgd_kappa_10"]["settings"]["probe_weights"] == {"net.features.relu1": 1.0}
        seeds = [entry["settings"]["seed"] for entry in record["attacks"].values()]
        assert len(set(seeds)) == len(seeds)
        assert record["train"]["git"]["commit"] and record["eval_git"]["commit"]
    section = adaptive_tables.adaptive_section(tmp_path)
    row = _table(section, "Table A1")[0]
    assert row["with the term"] == "AT-PGD-LR-L0 (λ 1)" and row["base"] == "AT-PGD" and row["seeds"] == "1"
    expected = 100 * (lr["worst_case_accuracy"] - base["worst_case_accuracy"])
    assert row["Δ worst case"] == f"{expected:.1f} ± 0.0"
    assert len(_table(section, "Table A2")) == 2
    # a second invocation finds both runs trained and evaluated with these settings: nothing is redone
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "raw_adaptive").iterdir()}
    run_adaptive.main(["--part", "pairs", "--only", "AT-PGD-LR-L0_lam1", "--seeds", "3", "--epochs", "1", "--quick",
                       "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "raw_adaptive").iterdir()}
    # the pairwise variant of the same base: its feature attack compares as its term did; the base's record
    # (attacked on the relative error of its LR-L0 partner) is reused
    run_adaptive.main(["--part", "variants", "--only", "AT-PGD-LR-L0-pw_lam1", "--seeds", "3", "--epochs", "1",
                       "--quick", "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    pw = json.loads((tmp_path / "raw_adaptive" / "digits__cnn_b__AT-PGD-LR-L0-pw_lam1__s3.json").read_text())
    assert pw["eval_settings"]["feature_measure"] == "relative_error_pairwise"
    assert pw["attacks"]["feature_pgd_kappa_10"]["settings"]["loss"].endswith("relative_error_pairwise at the probes")
    assert "feature_measure" not in lr["eval_settings"]
    assert (tmp_path / "raw_adaptive" / "digits__cnn_b__AT-PGD__s3.json").stat().st_mtime_ns == before[
        tmp_path / "raw_adaptive" / "digits__cnn_b__AT-PGD__s3.json"]
