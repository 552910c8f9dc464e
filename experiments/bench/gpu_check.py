"""GPU check: one prepared run that exercises every GPU code path and records the GPU numbers.

Four steps, each in its own process group with its own time budget. A step that fails or runs out
of time is reported as such (with whatever it printed before) and the others still run; the
``gpu_check`` section of RESULTS.md is rewritten after every step, so one run always leaves a useful
section and a log:

1. ``bench``: PreAct ResNet-18 on CIFAR-10-shaped synthetic data, batch 128, PGD-10 (Linf 8/255):
   median step time and ``torch.cuda.max_memory_allocated`` of PGD-10 AT and AT-LR (one MVL probe,
   the paper's LR-L2) in fp32, bf16 + channels_last (+ ``checkpoint_clean``) and bf16 +
   channels_last + ``compile_model``; ratios to PGD-10 AT fp32 and the implied 50k-image epoch.
2. ``pytest``: ``pytest -m gpu`` (every test that needs CUDA carries the ``gpu`` marker).
3. ``bf16``: the default digits run with ``trainer=gpu_bf16`` vs ``trainer=gpu`` (two seeds each):
   clean and PGD accuracy, finite losses; and every attack under bf16 autocast returns float32
   perturbations inside its ball.
4. ``ddp``: ``trainer=ddp trainer.devices=1`` short fit (NCCL, MVL refresh broadcast on one rank).

Targets are reported, never asserted. Logs go to ``--log-dir``: one log per step, ``gpu_check.log``,
``results.json`` and a copy of the results file.

``--smoke`` runs the same steps on the CPU with tiny sizes (bf16 under CPU autocast, ``compile`` with
the eager backend, DDP on gloo) and writes only to ``--results`` (a temporary file), never RESULTS.md.

Usage (about 6 minutes on one H100; ``gpu_check_device.sh`` wraps it for a lent machine without a
package index, ``--adopt`` brings the section it returns into RESULTS.md):
    python experiments/bench/gpu_check.py --log-dir "$OUT"
    python experiments/bench/gpu_check.py --smoke --results /tmp/gpu_check/RESULTS.md --log-dir /tmp/gpu_check
    python experiments/bench/gpu_check.py --adopt returned/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from bench_report import RESULTS, write_section  # noqa: E402

SECTION = "gpu_check"
RESULT_PREFIX = "RESULT "
#: Steps in run order; the steps of one phase run at the same time.
PHASES: tuple[tuple[str, ...], ...] = (("bench",), ("pytest",), ("bf16", "ddp"))
#: Seconds per step on a GPU (phases add up to about 6.5 minutes) and in the CPU smoke run.
BUDGETS = {"bench": 190, "pytest": 100, "bf16": 100, "ddp": 100}
SMOKE_BUDGETS = {"bench": 240, "pytest": 240, "bf16": 300, "ddp": 300}
TOTAL_BUDGET_S = 410
EPOCH_IMAGES = 50_000
TARGETS = {"lr_time": 1.15, "lr_memory": 1.3, "bf16_speedup": 1.8, "epoch_s": 20.0}


# -- steps (each runs in a child process: ``gpu_check.py --step NAME``) ----------------------------
def emit(**result: Any) -> None:
    """Prints one result line for the parent (read back even if the step is killed later)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def bench_configs(smoke: bool) -> list[dict[str, Any]]:
    """The measured configurations, cheapest first; the compiled ones (slow to warm up) last."""
    compile_kwargs = {"backend": "eager"} if smoke else {}  # Inductor needs a C++ toolchain on a CPU
    configs = []
    for precision, fast, compiled in (("fp32", False, False), ("bf16 + channels_last", True, False),
                                       ("bf16 + channels_last + compile", True, True)):
        configs.append({"method": "PGD-10 AT", "precision": precision, "with_lr": False, "fast": fast,
                        "compile": compile_kwargs if compiled else None, "checkpoint_clean": False})
        configs.append({"method": "AT-LR", "precision": precision, "with_lr": True, "fast": fast,
                        "compile": compile_kwargs if compiled else None, "checkpoint_clean": False})
        if precision == "bf16 + channels_last":
            configs.append({"method": "AT-LR, checkpoint_clean", "precision": precision, "with_lr": True,
                            "fast": True, "compile": None, "checkpoint_clean": True})
    return configs


def step_bench(args: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from gpu_epoch import build_module, build_trainer, peak_gib, reset_cuda_memory, synthetic_cifar
    from torch.utils.data import DataLoader
    from train_step import StepTimer

    if args.smoke:
        model, batch, steps, warmup, pgd_steps = "cnn_b", 4, 1, 1, 2  # ResNet-18 takes seconds a step on a CPU
    else:
        model, batch, steps, warmup, pgd_steps = "preact_resnet18", 128, 25, 6, 10
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    emit(kind="setup", model=model, batch=batch, steps=steps, warmup=warmup, pgd_steps=pgd_steps, device=device.type)
    data = synthetic_cifar((steps + warmup) * batch)

    class PeakAfterWarmup(L.Callback):
        """Resets the CUDA peak once the warm-up steps (compilation, cuDNN autotuning workspaces) are done."""

        def __init__(self) -> None:
            self.warmup_peak_gib = float("nan")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if batch_idx == warmup and device.type == "cuda":
                torch.cuda.synchronize()
                self.warmup_peak_gib = peak_gib()
                torch.cuda.reset_peak_memory_stats()

    for config in bench_configs(args.smoke):
        label = {"method": config["method"], "precision": config["precision"]}
        try:
            reset_cuda_memory()
            torch._dynamo.reset()
            L.seed_everything(0)
            module = build_module(model, config["with_lr"], config["fast"], compile_kwargs=config["compile"],
                                  checkpoint_clean=config["checkpoint_clean"], pgd_steps=pgd_steps)
            timer, peak = StepTimer(device), PeakAfterWarmup()
            trainer = build_trainer(config["fast"], [timer, peak], max_steps=steps + warmup)
            started = time.perf_counter()
            trainer.fit(module, DataLoader(data, batch_size=batch, shuffle=True, drop_last=True))
            emit(kind="bench", **label, step_s=statistics.median(timer.times[warmup:]),
                 warmup_s=sum(timer.times[:warmup]), peak_gib=peak_gib(), warmup_peak_gib=peak.warmup_peak_gib,
                 wall_s=time.perf_counter() - started, steps=len(timer.times))
        except Exception as err:  # report it and go on with the next configuration
            emit(kind="bench_error", **label, error=f"{type(err).__name__}: {err}"[:500])
        finally:
            module = trainer = None


def step_pytest(args: argparse.Namespace) -> None:
    xml_path = Path(args.log_dir) / "pytest.xml"
    # smoke: one file of GPU tests, so that collecting the whole suite does not dominate
    paths = ["tests/training/test_gpu_paths.py"] if args.smoke else ["tests"]
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs",
               f"--junitxml={xml_path}", *paths]
    print("+ " + " ".join(command), flush=True)
    proc = subprocess.run(command, cwd=REPO, check=False)
    emit(kind="pytest", returncode=proc.returncode, **junit_counts(xml_path))


def junit_counts(path: Path) -> dict[str, Any]:
    """Totals and failing test ids of a pytest JUnit XML file (empty counts if it is missing)."""
    if not path.exists():
        return {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": []}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {**totals, "failed": failed}


def check_attack_dtypes(smoke: bool) -> list[dict[str, Any]]:
    """Every registered attack under bf16 autocast on an fp32 batch: output dtype, finiteness and ball."""
    import torch

    from lsa_train.attacks import create_attack, list_attacks
    from lsa_train.models import create_model

    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    torch.manual_seed(0)
    model = create_model("cnn_b", num_classes=10, in_channels=1, input_size=8).to(device).train()
    x = torch.rand(32, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    rows = []
    for name in list_attacks():
        if name == "none":
            continue
        attack = create_attack(name, eps=0.1, **({} if name.startswith("fgsm") else {"steps": 3}))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            x_adv = attack(model, x, y)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if attack.norm == "linf" else delta.norm(dim=1)
        rows.append({"attack": name, "dtype": str(x_adv.dtype).replace("torch.", ""),
                     "finite": bool(torch.isfinite(x_adv).all()), "max_size": float(size.max()),
                     "in_ball": bool((size <= attack.eps + 1e-6).all()), "moved": bool(size.max() > 0)})
    return rows


def app_env() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def start_app(overrides: Sequence[str], run_dir: Path) -> subprocess.Popen:
    """Starts ``python -m lsa_train`` with ``overrides`` in ``run_dir`` (output in ``run_dir/app.log``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lsa_train", *overrides, f"hydra.run.dir={run_dir}",
               "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
    print("+ " + " ".join(command), flush=True)
    log = (run_dir / "app.log").open("w")
    return subprocess.Popen(command, cwd=run_dir, env=app_env(), stdout=log, stderr=subprocess.STDOUT)


def train_losses_finite(run_dir: Path) -> bool | None:
    """Whether every logged ``train/loss*`` value in the run's CSV metrics is finite (None: no values)."""
    values = []
    for path in run_dir.rglob("metrics.csv"):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                values += [float(v) for k, v in row.items() if k and k.startswith("train/loss") and v not in ("", None)]
    return all(math.isfinite(v) for v in values) if values else None


def run_summary(run_dir: Path, returncode: int) -> dict[str, Any]:
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    log = run_dir / "app.log"
    # counted in the log, as the refreshes this process ran (metrics.json's mvl_history is the whole run's)
    refreshes = len(re.findall(r"\[LSA\] epoch \d+: MVL", log.read_text(errors="replace"))) if log.exists() else 0
    return {"returncode": returncode, "status": metrics.get("status", "no metrics.json"),
            "acc_clean": metrics.get("acc_clean"), "acc_pgd": metrics.get("acc_pgd"),
            "epochs": metrics.get("epochs"), "refreshes": refreshes,
            "losses_finite": train_losses_finite(run_dir), "wall_s": metrics.get("wall_time_s")}


def step_bf16(args: argparse.Namespace) -> None:
    emit(kind="attack_dtypes", rows=check_attack_dtypes(args.smoke))
    if args.smoke:  # two batches on the CPU; bf16 under CPU autocast
        tiny = ["trainer=cpu", "trainer.max_epochs=1", "++trainer.limit_train_batches=2",
                "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1"]
        variants = {"bf16": [*tiny, "++trainer.precision=bf16-mixed"]}  # one app run: the comparison is unit-tested
        seeds, extra = [313], []
    else:
        variants = {"fp32": ["trainer=gpu"], "bf16": ["trainer=gpu_bf16"]}
        seeds, extra = [313, 1], ["trainer.max_epochs=5"]
    runs = {}
    for variant, overrides in variants.items():
        for seed in seeds:
            run_dir = Path(args.log_dir) / "bf16" / f"{variant}_seed{seed}"
            runs[(variant, seed)] = (run_dir, start_app([*overrides, *extra, f"seed={seed}"], run_dir))
    for (variant, seed), (run_dir, proc) in runs.items():
        emit(kind="bf16_run", variant=variant, seed=seed, **run_summary(run_dir, proc.wait()))


def step_ddp(args: argparse.Namespace) -> None:
    run_dir = Path(args.log_dir) / "ddp"
    if args.smoke:  # gloo on the CPU; SyncBatchNorm only runs on GPUs
        overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.sync_batchnorm=false",
                     "trainer.max_epochs=2", "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1",
                     "++trainer.limit_test_batches=1"]
    else:
        overrides = ["trainer=ddp", "trainer.devices=1", "trainer.max_epochs=2"]
    returncode = start_app(overrides, run_dir).wait()
    text = (run_dir / "app.log").read_text(errors="replace")
    for log in run_dir.glob("*.log"):
        text += log.read_text(errors="replace")
    backend = re.search(r"distributed_backend=(\w+)", text)
    emit(kind="ddp", backend=backend.group(1) if backend else None, **run_summary(run_dir, returncode))


STEPS = {"bench": step_bench, "pytest": step_pytest, "bf16": step_bf16, "ddp": step_ddp}


# -- the parent: budgets, logs and the RESULTS.md section ---------------------------------------------
def run_step(name: str, command: Sequence[str], log_path: Path, timeout: float) -> dict[str, Any]:
    """Runs ``command`` in its own process group with output to ``log_path``; kills the whole group
    after ``timeout`` seconds. Returns status, seconds and the result lines printed so far."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=max(timeout, 1))
            status = "ok" if returncode == 0 else f"failed (exit {returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
    results = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by the kill
                results.append(json.loads(line[len(RESULT_PREFIX):]))
    return {"step": name, "status": status, "seconds": time.perf_counter() - started, "results": results}


def machine_facts(smoke: bool) -> dict[str, str]:
    import platform

    import torch

    facts = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "python": platform.python_version()}
    if torch.cuda.is_available() and not smoke:
        facts["card"] = torch.cuda.get_device_name(0)
        facts["cudnn"] = str(torch.backends.cudnn.version())
        facts["gpus"] = str(torch.cuda.device_count())
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20, check=False).stdout.strip()
            facts["driver"] = driver.splitlines()[0] if driver else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            facts["driver"] = "unknown"
    else:
        facts["card"] = "none (CPU smoke run)" if smoke else "none"
    return facts


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _met(value: float | None, bound: float, below: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "yes" if (value <= bound if below else value >= bound) else "NO"


def _results(steps: Mapping[str, dict], name: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in steps.get(name, {}).get("results", []) if r.get("kind") == kind]


def render_bench(step: dict | None) -> str:
    if step is None:
        return ""
    rows = _results({"bench": step}, "bench", "bench")
    setup = next(iter(_results({"bench": step}, "bench", "setup")), {})
    base = next((r for r in rows if r["method"] == "PGD-10 AT" and r["precision"] == "fp32"), None)
    by_key = {(r["method"], r["precision"]): r for r in rows}
    batch = setup.get("batch", 128)
    errors = _results({"bench": step}, "bench", "bench_error")
    lines = [
        f"Model `{setup.get('model', '?')}`, batch {batch} of random 3x32x32 images, PGD-{setup.get('pgd_steps', '?')} "
        f"Linf eps 8/255 step 2/255, SGD; AT-LR: LSA term (lambda 0.1) on probe 2 (fixed MVL). Median of "
        f"{setup.get('steps', '?')} steps after {setup.get('warmup', '?')} warm-up steps (training step + backward + "
        f"optimizer step, synchronized; data loading excluded); peak: `torch.cuda.max_memory_allocated` over the "
        f"steps after the warm-up (warm-up peaks, with cuDNN autotuning workspaces, in results.json). "
        f"Epoch: step time x {EPOCH_IMAGES} / {batch} (no validation).",
        "",
        "| method | precision | ms / step | vs AT fp32 | peak GiB | vs AT fp32 | 50k epoch s | warm-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        time_ratio = r["step_s"] / base["step_s"] if base else None
        mem_ratio = r["peak_gib"] / base["peak_gib"] if base and base["peak_gib"] > 0 else None
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['step_s'] * 1000:.1f} | {_fmt(time_ratio)} | "
            f"{_fmt(r['peak_gib'], '.2f')} | {_fmt(mem_ratio, '.2f')} | {r['step_s'] * EPOCH_IMAGES / batch:.1f} | "
            f"{r['warmup_s']:.1f} |"
        )

    lines += [f"| {e['method']} | {e['precision']} | failed: {e['error'][:200].replace('|', '/')} | | | | | |"
              for e in errors]

    def ratio(a: tuple[str, str], b: tuple[str, str], key: str) -> float | None:
        if a in by_key and b in by_key and by_key[b][key] > 0:
            return by_key[a][key] / by_key[b][key]
        return None

    fast, compiled = "bf16 + channels_last", "bf16 + channels_last + compile"
    lr_time = ratio(("AT-LR", fast), ("PGD-10 AT", fast), "step_s")
    lr_time_c = ratio(("AT-LR", compiled), ("PGD-10 AT", compiled), "step_s")
    lr_mem = ratio(("AT-LR", fast), ("PGD-10 AT", fast), "peak_gib")
    lr_mem_ckpt = ratio(("AT-LR, checkpoint_clean", fast), ("PGD-10 AT", fast), "peak_gib")
    speedup = ratio(("PGD-10 AT", "fp32"), ("PGD-10 AT", fast), "step_s")
    epochs = [r["step_s"] * EPOCH_IMAGES / batch for r in rows if r["method"] == "PGD-10 AT"]
    best_epoch = min(epochs) if epochs else None
    lines += [
        "",
        "| target | value | bound | met |",
        "|---|---:|---:|:---:|",
        f"| AT-LR / PGD-10 AT step time, bf16 + channels_last | {_fmt(lr_time)} | <= {TARGETS['lr_time']} | "
        f"{_met(lr_time, TARGETS['lr_time'])} |",
        f"| AT-LR / PGD-10 AT step time, + compile | {_fmt(lr_time_c)} | <= {TARGETS['lr_time']} | "
        f"{_met(lr_time_c, TARGETS['lr_time'])} |",
        f"| AT-LR / PGD-10 AT peak memory, bf16 + channels_last | {_fmt(lr_mem, '.2f')} | <= {TARGETS['lr_memory']} | "
        f"{_met(lr_mem, TARGETS['lr_memory'])} |",
        f"| same with `regularizer.checkpoint_clean=true` | {_fmt(lr_mem_ckpt, '.2f')} | <= {TARGETS['lr_memory']} | "
        f"{_met(lr_mem_ckpt, TARGETS['lr_memory'])} |",
        f"| PGD-10 AT speed-up, bf16 + channels_last vs fp32 | {_fmt(speedup, '.2f')} | >= {TARGETS['bf16_speedup']} | "
        f"{_met(speedup, TARGETS['bf16_speedup'], below=False)} |",
        f"| PGD-10 AT 50k-image epoch, fastest setting (s) | {_fmt(best_epoch, '.1f')} | < {TARGETS['epoch_s']:g} | "
        f"{_met(best_epoch, TARGETS['epoch_s'])} |",
    ]
    return "\n".join(lines)


def render_pytest(step: dict | None) -> str:
    result = next(iter(_results({"pytest": step or {}}, "pytest", "pytest")), None)
    if result is None:
        return ""
    text = (f"`pytest -m gpu`: {result['tests']} tests, {result['failures']} failed, {result['errors']} errors, "
            f"{result['skipped']} skipped (exit {result['returncode']}).")
    if result["failed"]:
        text += "\n\nFailing: " + ", ".join(f"`{name}`" for name in result["failed"][:20])
    return text


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def render_bf16(step: dict | None) -> str:
    if step is None:
        return ""
    steps = {"bf16": step}
    lines = []
    dtypes = next(iter(_results(steps, "bf16", "attack_dtypes")), None)
    if dtypes is not None:
        lines += ["Attacks under bf16 autocast on a float32 batch (model B, eps 0.1):", "",
                  "| attack | output dtype | finite | in its ball | max size |", "|---|---|:---:|:---:|---:|"]
        lines += [f"| {r['attack']} | {r['dtype']} | {r['finite']} | {r['in_ball']} | {r['max_size']:.4f} |"
                  for r in dtypes["rows"]]
        lines.append("")
    runs = _results(steps, "bf16", "bf16_run")
    if runs:
        lines += ["| run | seed | status | clean % | PGD-20 % | losses finite | wall s |",
                  "|---|---:|---|---:|---:|:---:|---:|"]
        for r in runs:
            pct = [_fmt(100 * r[k], ".2f") if r[k] is not None else "n/a" for k in ("acc_clean", "acc_pgd")]
            lines.append(f"| {r['variant']} | {r['seed']} | {r['status']} (exit {r['returncode']}) | {pct[0]} | "
                         f"{pct[1]} | {r['losses_finite']} | {_fmt(r['wall_s'], '.1f')} |")
        for key, label in (("acc_clean", "clean"), ("acc_pgd", "PGD-20")):
            fp32 = [r[key] for r in runs if r["variant"] == "fp32" and r[key] is not None]
            bf16 = [r[key] for r in runs if r["variant"] == "bf16" and r[key] is not None]
            if not fp32 or not bf16:
                continue
            gap = abs(_mean(bf16) - _mean(fp32))
            spreads = [max(v) - min(v) for v in (fp32, bf16) if len(v) > 1]
            noise = max(spreads) if spreads else None
            verdict = "n/a (one seed)" if noise is None else ("yes" if gap <= max(noise, 0.01) else "NO")
            lines.append(f"\n{label}: |mean bf16 - mean fp32| = {100 * gap:.2f} points; seed spread "
                         f"{_fmt(None if noise is None else 100 * noise, '.2f')} points; within seed noise: {verdict}.")
    return "\n".join(lines)


def render_ddp(step: dict | None) -> str:
    result = next(iter(_results({"ddp": step or {}}, "ddp", "ddp")), None)
    if result is None:
        return ""
    return (f"`trainer=ddp trainer.devices=1`: exit {result['returncode']}, status {result['status']}, backend "
            f"{result['backend']}, {result['epochs']} epochs, {result['refreshes']} MVL refreshes (broadcast from "
            f"rank 0), losses finite: {result['losses_finite']}, clean {_fmt(result['acc_clean'], '.3f')}, "
            f"PGD {_fmt(result['acc_pgd'], '.3f')}.")


TITLES = {
    "bench": "1. PGD-10 AT and AT-LR step: fp32, bf16 + channels_last, + compile",
    "pytest": "2. GPU tests",
    "bf16": "3. bf16 correctness: default digits run, `trainer=gpu_bf16` vs `trainer=gpu`",
    "ddp": "4. DDP on one GPU",
}
RENDER = {"bench": render_bench, "pytest": render_pytest, "bf16": render_bf16, "ddp": render_ddp}


def render_section(steps: Mapping[str, dict], facts: Mapping[str, str], smoke: bool) -> str:
    """The ``gpu_check`` section: machine facts, then each step's status and results (partial ones too)."""
    title = "## GPU check (CPU smoke run: sizes are tiny, figures mean nothing)" if smoke else "## GPU check"
    parts = [
        title,
        "",
        f"Card: {facts.get('card')}; torch {facts.get('torch')}, CUDA {facts.get('cuda')}, cuDNN "
        f"{facts.get('cudnn', 'n/a')}, driver {facts.get('driver', 'n/a')}, Python {facts.get('python')}.",
        "",
        "| step | status | seconds |",
        "|---|---|---:|",
    ]
    for phase in PHASES:
        for name in phase:
            step = steps.get(name)
            status = step["status"] if step else "not run"
            parts.append(f"| {TITLES[name]} | {status} | {_fmt(step['seconds'], '.0f') if step else 'n/a'} |")
    for phase in PHASES:
        for name in phase:
            body = RENDER[name](steps.get(name))
            if body:
                parts += ["", f"### {TITLES[name]}", "", body]
    return "\n".join(parts)


def run_all(args: argparse.Namespace) -> dict[str, dict]:
    log_dir = Path(args.log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results).resolve()
    budgets = SMOKE_BUDGETS if args.smoke else BUDGETS
    total = args.total_budget if args.total_budget is not None else (sum(SMOKE_BUDGETS.values()) if args.smoke
                                                                      else TOTAL_BUDGET_S)
    facts = machine_facts(args.smoke)
    started = time.perf_counter()
    steps: dict[str, dict] = {}
    main_log = (log_dir / "gpu_check.log").open("a")

    def say(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        main_log.write(line + "\n")
        main_log.flush()

    say(f"gpu_check {'--smoke ' if args.smoke else ''}on {facts}; logs in {log_dir}; results in {results_path}")
    for phase in PHASES:
        remaining = total - (time.perf_counter() - started)
        if remaining < 5:
            say(f"no time left for {phase}")
            break
        commands = {
            name: [sys.executable, str(Path(__file__).resolve()), "--step", name, "--log-dir", str(log_dir),
                   *(["--smoke"] if args.smoke else [])]
            for name in phase
        }
        timeouts = {name: min(budgets[name], remaining) for name in phase}
        with ThreadPoolExecutor(max_workers=len(phase)) as pool:
            futures = [pool.submit(run_step, name, commands[name], log_dir / f"{name}.log", timeouts[name])
                       for name in phase]
            outcomes = [future.result() for future in futures]
        for outcome in outcomes:
            steps[outcome["step"]] = outcome
            say(f"step {outcome['step']}: {outcome['status']} in {outcome['seconds']:.0f} s, "
                f"{len(outcome['results'])} result lines (log: {log_dir / (outcome['step'] + '.log')})")
        write_section(SECTION, render_section(steps, facts, args.smoke), path=results_path)
        (log_dir / "results.json").write_text(json.dumps({"facts": facts, "steps": steps}, indent=1))
    if results_path != (log_dir / "RESULTS.md").resolve():
        shutil.copyfile(results_path, log_dir / "RESULTS.md")
    say(f"done in {time.perf_counter() - started:.0f} s; section '{SECTION}' of {results_path} written")
    main_log.close()
    return steps


def adopt_section(source: Path, target: Path = RESULTS) -> None:
    """Copies the ``gpu_check`` section (provenance line included) of ``source``, e.g. the RESULTS.md a
    GPU machine returned, into ``target``; the rest of ``target`` stays as it is.

    Raises:
        ValueError: ``source`` has no such section, or it is still the placeholder.
    """
    pattern = re.compile(rf"<!-- bench:{SECTION} -->.*?<!-- /bench:{SECTION} -->", re.S)
    found = pattern.search(source.read_text())
    if found is None or "_Command: `" not in found.group(0):
        raise ValueError(f"{source} holds no measured '{SECTION}' section (missing, or only the placeholder)")
    text = target.read_text()
    block = found.group(0)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    target.write_text(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run; needs --results outside RESULTS.md")
    parser.add_argument("--log-dir", default=str(HERE / "outputs" / "gpu_check"), help="logs and results.json")
    parser.add_argument("--results", default=str(RESULTS), help="the results file whose section is written")
    parser.add_argument("--total-budget", type=float, default=None, help="seconds for all steps together")
    parser.add_argument("--adopt", metavar="FILE", help="copy the section of FILE (a returned RESULTS.md) to --results")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.adopt:
        try:
            adopt_section(Path(args.adopt), Path(args.results))
        except (OSError, ValueError) as err:
            parser.error(str(err))
        print(f"section '{SECTION}' of {args.results} now holds that of {args.adopt}")
        return
    if args.step:
        STEPS[args.step](args)
        return
    if args.smoke and Path(args.results).resolve() == RESULTS.resolve():
        parser.error(f"--smoke writes no figures into {RESULTS}: pass --results PATH (e.g. a temporary file)")
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or pass --smoke (with --results PATH) on a CPU")
    run_all(args)


if __name__ == "__main__":
    main()
