"""``lsa-compare``: the statistics against hand-computed values, the pairing rule, and the command line on run
folders written in the app's format, on records, and on bad input."""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import pytest
from compare_runs import write_run, write_sweep

from lsa_train.app import compare
from lsa_train.comparison import CompareError, Run, holm, pair_runs, paired_stats, sign_flip_p, t_interval, t_test
from lsa_train.comparison.stats import mean_std

ROOT = Path(__file__).resolve().parents[2]
PAPER_COMPARE = ROOT / "experiments" / "paper" / "compare"


# -- statistics ------------------------------------------------------------------------------------------
def test_t_test_and_interval_match_hand_computed_values() -> None:
    # deltas 1..5: mean 3, sample std sqrt(2.5), t = 3 / (sqrt(2.5) / sqrt(5)) = 4.2426, 4 df
    t, p = t_test([1.0, 2.0, 3.0, 4.0, 5.0])
    assert t == pytest.approx(4.242640687)
    # 4 df: P(|T| < t) = sin(a) (1 + cos(a)^2 / 2) with tan(a) = t / 2 = sqrt(4.5) -> p = 1 - 36 / (11 sqrt(11))
    assert p == pytest.approx(1 - 36 / (11 * math.sqrt(11)))
    low, high = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # t_{0.975, 4} = 2.776445
    assert (low, high) == pytest.approx((3 - 2.776445105 * math.sqrt(0.5), 3 + 2.776445105 * math.sqrt(0.5)))
    assert mean_std([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((3.0, math.sqrt(2.5)))


def test_t_test_is_scipys_paired_t_test() -> None:
    from scipy import stats

    base = [48.3, 50.6, 45.0, 49.7, 48.1]
    treatment = [55.0, 55.3, 53.6, 55.3, 53.4]
    deltas = [t - b for t, b in zip(treatment, base)]
    assert t_test(deltas) == pytest.approx(tuple(stats.ttest_rel(treatment, base)))


def test_undefined_statistics_are_nan() -> None:
    assert all(math.isnan(v) for v in t_test([2.0]))
    assert all(math.isnan(v) for v in t_test([2.0, 2.0, 2.0]))  # no spread: the t-test is undefined
    assert all(math.isnan(v) for v in t_interval([2.0]))
    assert math.isnan(mean_std([1.0])[1])


def test_sign_flip_p_is_exact_for_small_n() -> None:
    # +-1 +-2 +-3: |sum| >= 6 only for all-plus and all-minus -> 2/8
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    # 1 - 2 + 4 = 3: the sums of the 8 assignments are +-3, +-1, +-7, +-5 -> six with |sum| >= 3
    assert sign_flip_p([1.0, -2.0, 4.0]) == 0.75
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([0.5, -0.5]) == 1.0


def test_sign_flip_p_cannot_go_below_two_over_two_to_the_n() -> None:
    assert sign_flip_p([6.7, 4.7, 8.6, 5.6, 5.3]) == 0.0625  # 5 pairs, all one way: 2 / 32
    assert sign_flip_p([1.0] * 10) == 2 / 1024
    assert math.isnan(sign_flip_p([1.0] * 25)) and math.isnan(sign_flip_p([]))


def test_sign_flip_p_enumerates_in_chunks_beyond_16_pairs() -> None:
    assert sign_flip_p([1.0] * 17) == 2 / 2**17
    assert sign_flip_p([1.0] * 16 + [0.0]) == 2 / 2**16  # a zero difference flips to itself


def test_holm_on_a_known_vector() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06 for the last
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    adjusted = holm([0.01, math.nan, 0.02])  # nan is not in the family: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_paired_stats_collects_everything() -> None:
    stats = paired_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats.n == 5 and stats.mean == 3.0 and stats.p_sign_flip == 0.0625
    assert stats.p_t == pytest.approx(1 - 36 / (11 * math.sqrt(11))) and stats.deltas == (1.0, 2.0, 3.0, 4.0, 5.0)


# -- pairing ---------------------------------------------------------------------------------------------
def _run(label: str, seed: int, acc: float = 0.5, **settings: object) -> Run:
    return Run(label, seed, {"seed": seed, **settings}, {"clean": acc})


def test_pairs_differ_only_in_the_key_and_share_the_seed() -> None:
    runs = [_run(f"lam{lam}-s{s}-{a}", s, lam=lam, attack=a) for lam in (0, 1) for s in (1, 2) for a in ("pgd", "mart")]
    pairing = pair_runs(runs, ["lam"])
    assert len(pairing.comparisons) == 2 and not pairing.unpaired  # one per attack
    for comparison in pairing.comparisons:
        assert comparison.baseline == (0,) and comparison.treatment == (1,)
        for pair in comparison.pairs:
            assert pair.baseline.seed == pair.treatment.seed
            assert pair.baseline.settings["attack"] == pair.treatment.settings["attack"]
    assert pairing.context_keys == ["attack"]


def test_runs_without_a_partner_are_listed_with_the_reason() -> None:
    runs = [_run("a1", 1, lam=0), _run("b1", 1, lam=1), _run("b2", 2, lam=1),
            _run("c1", 1, lam=1, epochs=3), _run("a3", 3, lam=0, tag="x")]
    pairing = pair_runs(runs, ["lam"])
    assert [(p.baseline.label, p.treatment.label) for c in pairing.comparisons for p in c.pairs] == [("a1", "b1")]
    reasons = {run.label: why for run, why in pairing.unpaired}
    assert set(reasons) == {"b2", "c1", "a3"}
    assert "no partner of seed 2" in reasons["b2"]
    assert "also differs in epochs" in reasons["c1"]
    assert "no run of seed 3" in reasons["a3"]


def test_ignored_keys_may_differ_within_a_pair() -> None:
    runs = [_run("a", 1, lam=0, tags="x"), _run("b", 1, lam=1, tags="y")]
    with pytest.raises(CompareError, match="no pairs"):
        pair_runs(runs, ["lam"])
    (comparison,) = pair_runs(runs, ["lam"], ignore=["tags"]).comparisons
    assert [(p.baseline.label, p.treatment.label) for p in comparison.pairs] == [("a", "b")]


def test_a_group_key_covers_everything_below_it() -> None:
    runs = [_run(f"{r}{s}", s, regularizer=r, **{"regularizer.lambda": 0.0 if r == "none" else 0.1,
                                                "regularizer.mvl.mode": "none" if r == "none" else "auto"})
            for r in ("lsa", "none") for s in (1, 2)]
    with pytest.raises(CompareError, match="no pairs"):
        pair_runs(runs, ["regularizer.lambda"])  # mvl.mode differs too
    pairing = pair_runs(runs, ["regularizer"])
    (comparison,) = pairing.comparisons
    assert comparison.baseline == ("none",) and comparison.treatment == ("lsa",) and len(comparison.pairs) == 2


def test_baseline_option_and_default_order() -> None:
    runs = [_run(f"{a}{s}", s, attack=a) for a in ("pgd", "mart", "trades") for s in (1, 2)]
    default = pair_runs(runs, ["attack"])
    assert [c.baseline for c in default.comparisons] == [("mart",), ("mart",)]  # text: alphabetical
    chosen = pair_runs(runs, ["attack"], baseline={"attack": "pgd"})
    assert [(c.baseline, c.treatment) for c in chosen.comparisons] == [(("pgd",), ("mart",)), (("pgd",), ("trades",))]


def test_pairing_errors_are_one_line_and_name_the_keys() -> None:
    runs = [_run("a", 1, lam=0), _run("b", 1, lam=1)]
    with pytest.raises(CompareError, match=r"--by lamda: no run has this key; keys that differ between the runs: lam"):
        pair_runs(runs, ["lamda"])
    with pytest.raises(CompareError, match="seed key"):
        pair_runs(runs, ["seed"])
    with pytest.raises(CompareError, match="same settings and seed 1"):
        pair_runs([*runs, _run("a-again", 1, lam=0)], ["lam"])
    with pytest.raises(CompareError, match="--baseline attack: not one of the --by keys"):
        pair_runs(runs, ["lam"], baseline={"attack": "pgd"})


# -- the command line on app run folders -------------------------------------------------------------------
LAMBDA_JOBS = [
    (["regularizer.lambda=0", "seed=1"], 0.90, 0.40), (["regularizer.lambda=1", "seed=1"], 0.91, 0.45),
    (["regularizer.lambda=0", "seed=2"], 0.92, 0.42), (["regularizer.lambda=1", "seed=2"], 0.90, 0.44),
    (["regularizer.lambda=0", "seed=3"], 0.88, 0.41), (["regularizer.lambda=1", "seed=3"], 0.89, 0.47),
    (["regularizer.lambda=1", "seed=4"], 0.90, 0.43),  # its base never ran
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_sweep(tmp_path_factory.mktemp("compare") / "sweep", LAMBDA_JOBS)
    write_run(root / "7", ["regularizer.lambda=0", "seed=4"], clean=0.0, pgd=0.0, status="failed")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_cli_compares_a_multirun_folder(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert compare.main([str(sweep), "--by", "regularizer.lambda", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    rows = {r["metric"]: r for r in _rows(out / "compare.csv")}
    assert set(rows) == {"clean", "pgd"}  # training runs have no worst case
    assert rows["pgd"]["change"] == "regularizer.lambda: 0 → 1" and rows["pgd"]["n"] == "3"
    assert [float(d) for d in rows["pgd"]["deltas_pp"].split(";")] == pytest.approx([5.0, 2.0, 6.0])
    assert float(rows["pgd"]["mean_pp"]) == pytest.approx(13 / 3)
    assert float(rows["pgd"]["p_sign_flip"]) == 0.25  # 3 pairs, all one way: 2 / 8
    assert float(rows["pgd"]["p_t"]) == pytest.approx(t_test([5.0, 2.0, 6.0])[1])
    # the seed-4 run has no base; the failed job is named, not dropped
    assert f"`{sweep / '6'}` | 4 | no partner of seed 4" in report
    assert f"`{sweep / '7'}` | status failed" in report
    assert "No pair has worst-case accuracy in both runs." in report
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.csv", "pairs.csv", "compare.png"}
    pairs = _rows(out / "pairs.csv")
    assert {(p["seed"], p["baseline_run"], p["treatment_run"]) for p in pairs if p["metric"] == "pgd"} == {
        ("1", str(sweep / "0"), str(sweep / "1")), ("2", str(sweep / "2"), str(sweep / "3")),
        ("3", str(sweep / "4"), str(sweep / "5"))}


def test_cli_refuses_to_overwrite_different_outputs(sweep: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [str(sweep), "--by", "regularizer.lambda", "--out", str(out)]
    assert compare.main(args) == 0
    assert compare.main(args) == 0  # the same outputs again: fine
    (out / "compare.csv").write_text("edited\n")
    capsys.readouterr()
    assert compare.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "compare.csv already there with other content; pass --force" in err
    assert (out / "compare.csv").read_text() == "edited\n"
    assert compare.main([*args, "--force"]) == 0 and (out / "compare.csv").read_text() != "edited\n"


def test_cli_uses_the_evaluations_and_group_choices(tmp_path: Path) -> None:
    for seed, (base, lsa) in enumerate([(0.40, 0.46), (0.42, 0.45)], start=1):
        write_run(tmp_path / f"none{seed}", ["regularizer=none", f"seed={seed}"], clean=0.9, pgd=0.5,
                  evaluation={"clean": 0.9, "pgd": 0.5, "autoattack": base, "worst_case": base - 0.01})
        write_run(tmp_path / f"lsa{seed}", [f"seed={seed}"], clean=0.9, pgd=0.5,
                  evaluation={"clean": 0.9, "pgd": 0.52, "autoattack": lsa, "worst_case": lsa - 0.02})
    out = tmp_path / "out"
    inputs = [str(tmp_path / f"{r}{s}") for r in ("none", "lsa") for s in (1, 2)]
    assert compare.main([*inputs, "--by", "regularizer", "--metrics", "pgd,worst_case", "--out", str(out)]) == 0
    rows = {r["metric"]: r for r in _rows(out / "compare.csv")}
    assert rows["worst_case"]["change"] == "regularizer: none → lsa"  # the group choice, "off" first
    assert [float(d) for d in rows["worst_case"]["deltas_pp"].split(";")] == pytest.approx([5.0, 2.0])
    assert float(rows["pgd"]["mean_pp"]) == pytest.approx(2.0)
    # --source train reads metrics.json instead: no worst case there
    assert compare.main([*inputs, "--by", "regularizer", "--metrics", "pgd,worst_case", "--source", "train"]) == 0


def test_cli_reads_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "runs.jsonl"
    lines = [{"seed": s, "model": "cnn_b", "config": {"lr": lr, "lam": 1.0},
              "metrics": {"clean": 0.9, "pgd": {"0.1": 0.8, "0.2": 0.625 if lr else 0.5}}}
             for lr in (None, "L0") for s in range(4)]
    records.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert compare.main([str(records), "--by", "lr", "--metrics", "pgd"]) == 2
    assert "pgd has several eps (0.1, 0.2); choose one with --pgd-eps" in capsys.readouterr().err
    assert compare.main([str(records), "--by", "lr", "--metrics", "pgd", "--pgd-eps", "0.2"]) == 0
    report = capsys.readouterr().out
    assert "| lr: null → L0 | 4 | 0, 1, 2, 3 | +12.5, +12.5, +12.5, +12.5 | +12.5 ± 0.0 |" in report
    assert "| - | 0.1250 |" in report  # no spread: no t-test; the sign-flip p is 2 / 16


@pytest.mark.parametrize(("argv", "message"), [
    (["missing-folder", "--by", "lam"], "missing-folder: no such file or folder"),
    (["{sweep}", "--by", "regularizer.lamda"],
     "--by regularizer.lamda: no run has this key; keys that differ between the runs: regularizer.lambda, seed"),
    (["{sweep}", "--by", "trainer.max_epochs"], "no pairs: no two runs of the same seed differ only in "
                                                "trainer.max_epochs; keys that differ between the runs: "
                                                "regularizer.lambda"),
    (["{sweep}", "--by", "regularizer.lambda", "--metrics", "clean,fgsm"], "unknown metric(s) fgsm; choose from"),
    (["{sweep}", "--by", "regularizer.lambda", "--where", "seed=9"], "--where seed=9: no run matches"),
    (["{sweep}", "--by", "regularizer.lambda", "--baseline", "x"],
     "--baseline regularizer.lambda=x: no run has this value; regularizer.lambda is 0, 1"),
    (["{empty}", "--by", "lam"], "no run folder (with .hydra/config.yaml) and no .json records in it"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(argv: list[str], message: str, sweep: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.format(sweep=sweep, empty=tmp_path / "empty") for a in argv]
    code = compare.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("lsa-compare: error: ")
    assert message in err


def test_percent_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "r.json"
    record.write_text(json.dumps([{"seed": 0, "config": {"lr": None}, "clean": 93.1}]))
    assert compare.main([str(record), "--by", "lr", "--metrics", "clean"]) == 2
    assert "clean = 93.1 is not an accuracy in [0, 1] (a fraction, not percent)" in capsys.readouterr().err


# -- the paper's tables are lsa-compare's output ---------------------------------------------------------------
PAPER_REPORTS = sorted(PAPER_COMPARE.glob("*/compare.md"))


@pytest.mark.parametrize("report", PAPER_REPORTS, ids=[p.parent.name for p in PAPER_REPORTS])
def test_paper_comparison_tables_are_current(report: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running the command each ``experiments/paper/compare/*/compare.md`` names gives the same tables."""
    command = next(line for line in report.read_text().splitlines() if line.startswith("Made by `"))
    argv = shlex.split(command.removeprefix("Made by `").removesuffix("`."))[1:]
    out = tmp_path / "out"
    argv[argv.index("--out") + 1] = str(out)
    monkeypatch.chdir(ROOT)
    assert compare.main(argv) == 0
    for name in ("compare.csv", "pairs.csv"):
        assert (out / name).read_text() == (report.parent / name).read_text(), name
    body = [line for line in (out / "compare.md").read_text().splitlines() if not line.startswith("Made by")]
    assert body == [line for line in report.read_text().splitlines() if not line.startswith("Made by")]


def test_the_paper_reports_exist() -> None:
    assert {p.parent.name for p in PAPER_REPORTS} >= {"adaptive", "digits_bases"}


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    import subprocess
    import sys

    assert 'lsa-compare = "lsa_train.app.compare:main"' in (ROOT / "pyproject.toml").read_text()
    code = ("import sys, runpy; sys.argv = ['lsa-compare', '--help']\n"
            "try:\n    runpy.run_module('lsa_train.app.compare', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'lsa-compare imports torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: lsa-compare" in proc.stdout and "--by" in proc.stdout


def test_table_a1_holm_column_is_lsa_compares() -> None:
    """RESULTS.md's Table A1 (make_tables.py) and compare/adaptive (lsa-compare) give the same Holm p-values."""
    from lsa_train.comparison.render import format_p

    text = (ROOT / "experiments" / "paper" / "RESULTS.md").read_text()
    table = text[text.index("### Table A1"):text.index("### Table A2")]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| cnn_b") or
            line.startswith("| mlp_a")]
    from_results = sorted(cells[-1].strip() for cells in rows)
    compared = [r for r in _rows(PAPER_COMPARE / "adaptive" / "compare.csv") if r["metric"] == "worst_case"]
    assert len(rows) == len(compared) == 14
    assert from_results == sorted(format_p(float(r["p_t_holm"])) for r in compared)
