"""The prepared GPU check (``experiments/bench/gpu_check.py``): its CPU smoke run, budgets, partial reports,
and that every CUDA-only test carries the ``gpu`` marker it selects."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "experiments" / "bench"
sys.path.insert(0, str(BENCH_DIR))
import gpu_check  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the smoke run would not be a CPU run")
def test_smoke_run_goes_through_every_step_and_writes_only_the_given_file(tmp_path):
    results = BENCH_DIR / "RESULTS.md"
    before = results.read_text()
    target = tmp_path / "RESULTS.md"
    command = [sys.executable, str(BENCH_DIR / "gpu_check.py"), "--smoke", "--results", str(target),
               "--log-dir", str(tmp_path / "logs")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert results.read_text() == before  # a smoke run records nothing in the real file
    text = target.read_text()
    assert "<!-- bench:gpu_check -->" in text and "CPU smoke run" in text
    for title in gpu_check.TITLES.values():
        assert f"| {title} | ok |" in text, (title, (tmp_path / "logs" / "gpu_check.log").read_text())
    steps = __import__("json").loads((tmp_path / "logs" / "results.json").read_text())["steps"]
    bench = [r for r in steps["bench"]["results"] if r["kind"] == "bench"]
    assert [(r["method"], r["precision"]) for r in bench] == [
        (c["method"], c["precision"]) for c in gpu_check.bench_configs(smoke=True)
    ]
    assert all(r["step_s"] > 0 for r in bench)
    (pytest_result,) = [r for r in steps["pytest"]["results"] if r["kind"] == "pytest"]
    assert pytest_result["tests"] > 0 and pytest_result["skipped"] == pytest_result["tests"]  # no CUDA: all skip
    (dtypes,) = [r for r in steps["bf16"]["results"] if r["kind"] == "attack_dtypes"]
    assert dtypes["rows"] and all(r["dtype"] == "float32" and r["in_ball"] and r["moved"] for r in dtypes["rows"])
    runs = [r for r in steps["bf16"]["results"] if r["kind"] == "bf16_run"]
    assert [r["variant"] for r in runs] == ["bf16"]
    assert all(r["status"] == "completed" and r["losses_finite"] and r["acc_clean"] is not None for r in runs)
    (ddp,) = [r for r in steps["ddp"]["results"] if r["kind"] == "ddp"]
    assert ddp["returncode"] == 0 and ddp["backend"] == "gloo" and ddp["refreshes"] == 2
    assert (tmp_path / "logs" / "RESULTS.md").read_text() == text  # the copy that travels with the logs


def test_a_step_past_its_budget_is_killed_with_its_children_and_keeps_its_results(tmp_path):
    child = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        print('RESULT {{"kind": "bench", "n": 1}}', flush=True)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(child)!r}, "w").write(str(proc.pid))
        time.sleep(120)
    """)
    outcome = gpu_check.run_step("bench", [sys.executable, "-c", script], tmp_path / "bench.log", timeout=3)
    assert outcome["status"] == "timed out after 3 s"
    assert outcome["results"] == [{"kind": "bench", "n": 1}]
    assert outcome["seconds"] < 60
    pid = int(child.read_text())
    with pytest.raises(ProcessLookupError):  # the whole process group went (reaped by init once killed)
        for _ in range(50):
            os.kill(pid, 0)
            __import__("time").sleep(0.1)


def test_a_failing_step_is_reported_with_its_exit_code(tmp_path):
    outcome = gpu_check.run_step("ddp", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "ddp.log", 30)
    assert outcome["status"] == "failed (exit 3)" and outcome["results"] == []


def bench_row(method: str, precision: str, step_s: float, peak: float) -> dict:
    return {"kind": "bench", "method": method, "precision": precision, "step_s": step_s, "warmup_s": 1.0,
            "peak_gib": peak, "wall_s": 2.0, "steps": 31}


def test_section_with_partial_results_says_what_ran_and_what_did_not():
    steps = {
        "bench": {"status": "timed out after 190 s", "seconds": 190.0, "results": [
            {"kind": "setup", "model": "preact_resnet18", "batch": 128, "steps": 25, "warmup": 6, "pgd_steps": 10},
            bench_row("PGD-10 AT", "fp32", 0.100, 2.0),
            bench_row("AT-LR", "fp32", 0.112, 2.4),
            {"kind": "bench_error", "method": "PGD-10 AT", "precision": "bf16 + channels_last + compile",
             "error": "BackendCompilerFailed: inductor | boom"},
        ]},
        "pytest": {"status": "failed (exit 1)", "seconds": 80.0, "results": [
            {"kind": "pytest", "returncode": 1, "tests": 30, "failures": 1, "errors": 0, "skipped": 2,
             "failed": ["tests.training.test_gpu_paths::test_x[cuda]"]},
        ]},
    }
    text = gpu_check.render_section(steps, {"card": "NVIDIA H100 80GB HBM3", "torch": "2.14.1", "cuda": "13.0",
                                            "python": "3.11"}, smoke=False)
    assert "Card: NVIDIA H100 80GB HBM3; torch 2.14.1, CUDA 13.0" in text
    assert f"| {gpu_check.TITLES['bench']} | timed out after 190 s | 190 |" in text
    assert f"| {gpu_check.TITLES['bf16']} | not run | n/a |" in text
    assert "| AT-LR | fp32 | 112.0 | 1.120 | 2.40 | 1.20 | 43.8 | 1.0 |" in text  # 0.112 s x 50000 / 128
    assert "| AT-LR / PGD-10 AT step time, bf16 + channels_last | n/a | <= 1.15 | n/a |" in text
    assert "| PGD-10 AT 50k-image epoch, fastest setting (s) | 39.1 | < 20 | NO |" in text
    assert "| PGD-10 AT | bf16 + channels_last + compile | failed: BackendCompilerFailed: inductor / boom |" in text
    assert "1 failed" in text and "`tests.training.test_gpu_paths::test_x[cuda]`" in text


def test_section_targets_from_complete_results():
    rows = [bench_row("PGD-10 AT", "fp32", 0.100, 2.0), bench_row("AT-LR", "fp32", 0.120, 2.8),
            bench_row("PGD-10 AT", "bf16 + channels_last", 0.040, 1.0),
            bench_row("AT-LR", "bf16 + channels_last", 0.045, 1.4),
            bench_row("AT-LR, checkpoint_clean", "bf16 + channels_last", 0.048, 1.2),
            bench_row("PGD-10 AT", "bf16 + channels_last + compile", 0.030, 1.0),
            bench_row("AT-LR", "bf16 + channels_last + compile", 0.036, 1.4)]
    text = gpu_check.render_bench({"status": "ok", "seconds": 100.0,
                                   "results": [{"kind": "setup", "batch": 128}, *rows]})
    assert "| AT-LR / PGD-10 AT step time, bf16 + channels_last | 1.125 | <= 1.15 | yes |" in text
    assert "| AT-LR / PGD-10 AT step time, + compile | 1.200 | <= 1.15 | NO |" in text
    assert "| AT-LR / PGD-10 AT peak memory, bf16 + channels_last | 1.40 | <= 1.3 | NO |" in text
    assert "| same with `regularizer.checkpoint_clean=true` | 1.20 | <= 1.3 | yes |" in text
    assert "| PGD-10 AT speed-up, bf16 + channels_last vs fp32 | 2.50 | >= 1.8 | yes |" in text
    assert "| PGD-10 AT 50k-image epoch, fastest setting (s) | 11.7 | < 20 | yes |" in text


def test_bf16_comparison_within_and_beyond_seed_noise():
    def run(variant: str, seed: int, clean: float, pgd: float) -> dict:
        return {"kind": "bf16_run", "variant": variant, "seed": seed, "returncode": 0, "status": "completed",
                "acc_clean": clean, "acc_pgd": pgd, "losses_finite": True, "wall_s": 20.0}

    step = {"status": "ok", "seconds": 60.0, "results": [
        run("fp32", 313, 0.90, 0.60), run("fp32", 1, 0.88, 0.58),
        run("bf16", 313, 0.89, 0.50), run("bf16", 1, 0.89, 0.52),
    ]}
    text = gpu_check.render_bf16(step)
    assert "clean: |mean bf16 - mean fp32| = 0.00 points; seed spread 2.00 points; within seed noise: yes." in text
    assert "PGD-20: |mean bf16 - mean fp32| = 8.00 points; seed spread 2.00 points; within seed noise: NO." in text


def test_without_cuda_the_full_check_refuses_and_smoke_never_targets_results_md():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    script = str(BENCH_DIR / "gpu_check.py")
    full = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300, check=False)
    assert full.returncode == 2 and "no CUDA device" in full.stderr
    smoke = subprocess.run([sys.executable, script, "--smoke"], capture_output=True, text=True, timeout=300,
                           check=False)
    assert smoke.returncode == 2 and "--smoke writes no figures" in smoke.stderr


def _needs_cuda(decorator: ast.expr) -> bool:
    """``pytest.mark.skipif(not torch.cuda.is_available(), ...)``."""
    if not (isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("mark.skipif")):
        return False
    condition = ast.unparse(decorator.args[0]) if decorator.args else ""
    return condition.replace(" ", "") == "nottorch.cuda.is_available()"


def test_every_test_that_needs_cuda_carries_the_gpu_marker():
    """``pytest -m gpu`` (what the GPU check runs) must select every test that skips without CUDA."""
    unmarked, found = [], 0
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and any(map(_needs_cuda, node.decorator_list)):
                found += 1
                if not any(ast.unparse(d).endswith("mark.gpu") for d in node.decorator_list):
                    unmarked.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert found >= 2 and not unmarked, unmarked


def test_gpu_marked_tests_skip_on_cpu_with_a_reason():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/training/test_gpu_paths.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "needs a CUDA device (marker gpu" in out.stdout and " passed" not in out.stdout


def test_adopt_copies_the_returned_section_and_leaves_the_rest(tmp_path):
    placeholder = "<!-- bench:gpu_check -->\n## GPU check\n\nNot measured yet.\n<!-- /bench:gpu_check -->"
    measured = ("<!-- bench:gpu_check -->\n## GPU check\n\n| step | status |\n\n_Command: `python "
                "experiments/bench/gpu_check.py`; machine: H100._\n<!-- /bench:gpu_check -->")
    other = "<!-- bench:startup -->\nlocal figures\n<!-- /bench:startup -->"
    target = tmp_path / "RESULTS.md"
    target.write_text(f"# Benchmarks\n\n{other}\n\n{placeholder}\n")
    returned = tmp_path / "returned.md"
    returned.write_text(f"<!-- bench:startup -->\nGPU machine figures\n<!-- /bench:startup -->\n\n{measured}\n")
    gpu_check.adopt_section(returned, target)
    returned_placeholder = tmp_path / "placeholder.md"
    returned_placeholder.write_text(placeholder)
    assert target.read_text() == f"# Benchmarks\n\n{other}\n\n{measured}\n"
    with pytest.raises(ValueError, match="no measured 'gpu_check' section"):
        gpu_check.adopt_section(returned_placeholder, target)
