"""Benchmark: training-step time and peak memory of normal training, FGSM-RS AT, PGD-10 AT,
TRADES, MART, AWP and PGD-10 AT-LR on the same model and batch, as ratios to PGD-10 AT.

Each configuration trains for ``--steps`` steps with a Lightning ``Trainer`` in a fresh
subprocess; the step time is the median over steps after ``--warmup`` (a callback times
``on_train_batch_start`` to ``on_train_batch_end``, so the optimizer step is included).
Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, else the growth of the peak RSS
during ``fit``. Writes the ``train_step`` section of ``experiments/bench/RESULTS.md``.

Usage:
    python experiments/bench/train_step.py [--model cnn_b] [--batch 128] [--steps 30] [--device cpu]
    python experiments/bench/train_step.py --only mart pgd10_at_awp   # interleaved ratios of a few rows only
    python experiments/bench/train_step.py --section lr0_variants --input-size 8 --batch 64 --memory \
        --only mart7_lr0 mart7_lr0_stopgrad mart7_lr0_pairwise pgd7_lr0 pgd7_lr0_stopgrad pgd7_lr0_pairwise
    python experiments/bench/train_step.py --step-cost --rounds 30   # issue 26: AT-LR's step over PGD-10 AT
    python experiments/bench/train_step.py --profile pgd10_at pgd10_at_lr   # torch.profiler, by phase and op

``--malloc`` (default ``retain``): whether glibc keeps the memory a step frees
(:func:`lsa_train.training.allocator.retain_freed_memory`, what ``LSARegularizedModule`` does at fit start
on a CPU) or returns it to the kernel between steps (``default``: glibc's own thresholds, as before
issue 26, when every step could pay tens of thousands of page faults).

``--only`` rows are timed against their own base (``BASE_OF``: the LR-L0 variants against MART-7 or
PGD-7 on the digits settings, every other row against PGD-10 AT), which is added to the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import write_section

from lsa_train.attacks import FGSMRS, PGD, MARTAttack, TRADESAttack
from lsa_train.models import create_model
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule
from lsa_train.training.allocator import retain_freed_memory

TARGET_TIME_RATIO = 1.12  # AT-LR / PGD-AT; the floor is 12/11 = 1.09 (one more forward/backward)
TARGET_MEMORY_RATIO = 1.3
TARGET_STEP_COST_RATIO = 1.15  # issue 26: AT-LR / PGD-10 AT, fastest step; the floor is about 1.11-1.13 on a CPU
EPS = 0.1

CONFIGS = {
    "normal": lambda: {"attack": None, "base_loss": "normal"},
    "fgsm_rs_at": lambda: {"attack": FGSMRS(eps=EPS), "regularizer": None},
    "pgd10_at": lambda: {"attack": PGD(eps=EPS, alpha=EPS / 4, steps=10), "regularizer": None},
    "trades": lambda: {"attack": TRADESAttack(eps=EPS, steps=10), "base_loss": "trades", "regularizer": None},
    "mart": lambda: {"attack": MARTAttack(eps=EPS, alpha=EPS / 4, steps=10), "base_loss": "mart", "regularizer": None},
    "pgd10_at_awp": lambda: {
        "attack": PGD(eps=EPS, alpha=EPS / 4, steps=10), "awp": {"gamma": 5e-3}, "regularizer": None,
    },
    "trades_awp": lambda: {
        "attack": TRADESAttack(eps=EPS, steps=10), "base_loss": "trades", "awp": {"gamma": 5e-3}, "regularizer": None,
    },
    "pgd10_at_lr": lambda: {
        "attack": PGD(eps=EPS, alpha=EPS / 4, steps=10),
        "regularizer": LayerwiseRegularizer(gamma=0.1),
        "mvl": [2],
    },
    "pgd10_at_lr_probe0": lambda: {
        "attack": PGD(eps=EPS, alpha=EPS / 4, steps=10),
        "regularizer": LayerwiseRegularizer(gamma=0.1),
        "mvl": [0],
    },
    "pgd10_at_lr_checkpoint": lambda: {
        "attack": PGD(eps=EPS, alpha=EPS / 4, steps=10),
        "regularizer": LayerwiseRegularizer(gamma=0.1, checkpoint_clean=True),
        "mvl": [2],
    },
    "pgd10_at_lr_stopgrad": lambda: {
        "attack": PGD(eps=EPS, alpha=EPS / 4, steps=10),
        "regularizer": LayerwiseRegularizer(gamma=0.1, stop_clean_grad=True),
        "mvl": [2],
    },
    "pgd10_at_lr_awp": lambda: {
        "attack": PGD(eps=EPS, alpha=EPS / 4, steps=10),
        "regularizer": LayerwiseRegularizer(gamma=0.1),
        "mvl": [2],
        "awp": {"gamma": 5e-3},
    },
}

#: The digits runs' attacks (conf/attack/pgd.yaml and mart.yaml: 7 steps of 0.03 at eps 0.1).
DIGITS_STEPS, DIGITS_ALPHA = 7, 0.03


def _lr0(**regularizer_kwargs) -> dict:
    """LR-L0 as the digits runs use it: lambda 1 on the first activation probe (``mvl.layers=[0]``)."""
    return {"regularizer": LayerwiseRegularizer(gamma=1.0, **regularizer_kwargs), "mvl": [0]}


def _pgd7() -> PGD:
    return PGD(eps=EPS, alpha=DIGITS_ALPHA, steps=DIGITS_STEPS)


def _mart7() -> MARTAttack:
    return MARTAttack(eps=EPS, alpha=DIGITS_ALPHA, steps=DIGITS_STEPS)


#: Issue 21's variants of the LSA term (LR-L0) on the digits bases; only timed with ``--only`` (not in
#: the full table, whose rows share PGD-10 and the 28x28 input).
VARIANT_CONFIGS = {
    "pgd7": lambda: {"attack": _pgd7(), "regularizer": None},
    "pgd7_lr0": lambda: {"attack": _pgd7(), **_lr0()},
    "pgd7_lr0_stopgrad": lambda: {"attack": _pgd7(), **_lr0(stop_clean_grad=True)},
    "pgd7_lr0_pairwise": lambda: {"attack": _pgd7(), **_lr0(measure="relative_error_pairwise")},
    "mart7": lambda: {"attack": _mart7(), "base_loss": "mart", "regularizer": None},
    "mart7_lr0": lambda: {"attack": _mart7(), "base_loss": "mart", **_lr0()},
    "mart7_lr0_stopgrad": lambda: {"attack": _mart7(), "base_loss": "mart", **_lr0(stop_clean_grad=True)},
    "mart7_lr0_pairwise": lambda: {"attack": _mart7(), "base_loss": "mart", **_lr0(measure="relative_error_pairwise")},
}
ALL_CONFIGS = {**CONFIGS, **VARIANT_CONFIGS}

#: The row each configuration's ratios are taken against (default: PGD-10 AT).
BASE_OF = {name: ("mart7" if name.startswith("mart7") else "pgd7") for name in VARIANT_CONFIGS}


def base_of(name: str) -> str:
    return BASE_OF.get(name, "pgd10_at")


def input_shape(model_name: str, input_size: int | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the random batches: 1 channel for ``cnn_b`` (28 px unless set), else 3 (32 px)."""
    if model_name == "cnn_b":
        return (1, input_size or 28, input_size or 28)
    return (3, input_size or 32, input_size or 32)


class StepTimer(L.Callback):
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (MiB): ``VmHWM`` of ``/proc/self/status``, set back to the current
    RSS first when ``reset`` (``/proc/self/clear_refs``); elsewhere ``ru_maxrss``. ``ru_maxrss`` alone is not
    enough in a subprocess: Linux carries the parent's peak over ``fork`` + ``exec``, so a child of a bench
    process that had grown larger would see no growth at all."""
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(
    name: str, model_name: str, batch: int, steps: int, warmup: int, device: str, input_size: int | None = None,
    malloc: str = "retain",
) -> dict[str, float]:
    """``name`` trained for ``steps`` steps under a Trainer: median step time (s, after ``warmup``) and peak
    memory (MiB); ``malloc="default"`` leaves glibc's thresholds alone (``retain_cpu_memory=False``)."""
    torch.set_num_threads(1)  # steadier medians on a shared CPU; the ratios are what count
    torch.manual_seed(313)
    shape = input_shape(model_name, input_size)
    x = torch.rand(batch * 4, *shape)
    y = torch.randint(0, 10, (batch * 4,))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    model = create_model(model_name, num_classes=10, in_channels=shape[0], input_size=shape[1])
    module = LSARegularizedModule(
        model, check_finite=False, retain_cpu_memory=malloc == "retain", **ALL_CONFIGS[name]()
    )
    timer = StepTimer(torch.device(device))
    trainer = L.Trainer(
        accelerator=device, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], limit_val_batches=0,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_mb(reset=True)
    trainer.fit(module, loader)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb() - rss_before
    return {"median_s": statistics.median(timer.times[warmup:]), "peak_mb": peak}


def interleaved_step_times(
    model_name: str, batch: int, rounds: int, device: str, names: list[str] | None = None,
    input_size: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Per configuration: median step time (s) and median ratio to its base; see :func:`interleaved_step_stats`."""
    stats = interleaved_step_stats(model_name, batch, rounds, device, names, input_size)
    return {name: (row["median_s"], row["ratio"]) for name, row in stats.items()}


def interleaved_step_stats(
    model_name: str, batch: int, rounds: int, device: str, names: list[str] | None = None,
    input_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """The configurations take turns step by step on the same batch in a shuffled order each round, so
    that machine noise hits them alike (``training_step`` + backward + optimizer step); the first 2
    rounds are warm-up. ``names`` must hold each row's base (:func:`base_of`, PGD-10 AT unless set).

    Returns:
        Per configuration: ``median_s`` and ``fastest_s`` (seconds per step); ``ratio``: the median over
        rounds of the round's ratio to the base (cancels slow drifts of the machine's speed);
        ``fastest_ratio``: the fastest step over the base's fastest step (the step without
        interruptions: other processes, page faults); ``faults``: the median number of minor page
        faults per step (the kernel handing memory to the process, about 2 us per 4 KiB page).
    """
    import random
    import warnings

    torch.set_num_threads(1)
    torch.manual_seed(313)
    shape = input_shape(model_name, input_size)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    runs = {}
    for name in names or list(CONFIGS):
        make = ALL_CONFIGS[name]
        model = create_model(model_name, num_classes=10, in_channels=shape[0], input_size=shape[1]).to(device)
        module = LSARegularizedModule(model, check_finite=False, **make())
        runs[name] = (module, module.configure_optimizers())
    times: dict[str, list[float]] = {name: [] for name in runs}
    faults: dict[str, list[int]] = {name: [] for name in runs}
    timer = StepTimer(torch.device(device))
    order = list(runs)
    shuffler = random.Random(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for step in range(rounds):
            shuffler.shuffle(order)
            for name in order:
                module, optimizer = runs[name]
                timer._sync()
                faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                loss = module.training_step((x, y), step)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                timer._sync()
                times[name].append(time.perf_counter() - start)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    stats = {}
    for name, values in times.items():
        base = times[base_of(name)][2:]
        stats[name] = {
            "median_s": statistics.median(values[2:]),
            "fastest_s": min(values[2:]),
            "ratio": statistics.median(v / b for v, b in zip(values[2:], base)),
            "fastest_ratio": min(values[2:]) / min(base),
            "faults": statistics.median(faults[name][2:]),
        }
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_b")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the interleaved timing")
    parser.add_argument("--memory-batch", type=int, default=1024,
                        help="batch of the memory runs: large, so activations dominate the fixed costs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--input-size", type=int, default=None,
                        help="side of the random images (default 28 for cnn_b, else 32; the digits are 8)")
    parser.add_argument("--config", choices=list(ALL_CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", choices=list(ALL_CONFIGS),
                        help="time only these configurations (and their bases), interleaved; own results section")
    parser.add_argument("--section", choices=list(ONLY_SECTIONS), default="mart_awp",
                        help="with --only: the RESULTS.md section written (title and notes)")
    parser.add_argument("--memory", action="store_true",
                        help="with --only: also a fresh-process peak-memory run per row at --memory-batch")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each memory run")
    parser.add_argument("--malloc", choices=["retain", "default"], default="retain",
                        help="retain: glibc keeps freed memory (what training does on a CPU); default: glibc's "
                             "thresholds (the memory runs outside --step-cost always use these, as before)")
    parser.add_argument("--step-cost", action="store_true",
                        help="issue 26: AT-LR (and checkpoint_clean, stop_clean_grad) vs PGD-10 AT under both --malloc "
                             "modes, with memory; own results section")
    parser.add_argument("--profile", nargs="+", choices=list(ALL_CONFIGS),
                        help="torch.profiler of these configurations' steps, by phase and op (printed only)")
    parser.add_argument("--stats-json", nargs="+", choices=list(ALL_CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.malloc == "retain" and args.device == "cpu":
        retain_freed_memory()  # as LSARegularizedModule.on_fit_start does; the --config runs pass it on too
    if args.config:
        print(json.dumps(run_one(args.config, args.model, args.batch, args.steps, args.warmup, args.device,
                                 args.input_size, args.malloc)))
        return
    if args.stats_json:
        print(json.dumps(interleaved_step_stats(args.model, args.batch, args.rounds + 2, args.device,
                                                args.stats_json, input_size=args.input_size)))
        return
    if args.profile:
        profile_steps(args)
        return
    if args.step_cost:
        step_cost_section(args)
        return
    if args.only:
        interleaved_subset(args)
        return
    results: dict[str, dict[str, float]] = {}

    for name in CONFIGS:
        results[name] = fresh_process_run(args, name, args.batch, args.steps, args.warmup, malloc=args.malloc)
        results[name]["peak_mb"] = fresh_process_run(args, name, args.memory_batch, 3, 1)["peak_mb"]
    step_times = interleaved_step_times(args.model, args.batch, args.rounds + 2, args.device,
                                        input_size=args.input_size)
    for name, (median, ratio) in step_times.items():
        results[name]["step_s"], results[name]["step_ratio"] = median, ratio
    base = results["pgd10_at"]
    rows = "\n".join(
        f"| {name} | {r['step_s'] * 1000:.1f} | {r['step_ratio']:.3f} | {r['median_s'] * 1000:.1f} | "
        f"{r['median_s'] / base['median_s']:.3f} | {r['peak_mb']:.0f} | "
        f"{r['peak_mb'] / base['peak_mb']:.2f} |"
        for name, r in results.items()
    )
    time_ratio = results["pgd10_at_lr"]["step_ratio"]
    mem_ratio = results["pgd10_at_lr"]["peak_mb"] / base["peak_mb"]
    time_met = "yes" if time_ratio <= TARGET_TIME_RATIO else "NO"
    mem_met = "yes" if mem_ratio <= TARGET_MEMORY_RATIO else "NO"
    memory_kind = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS growth during fit"
    malloc_note = "" if args.device == "cuda" else (
        f" Timings with `--malloc {args.malloc}` (`retain`: glibc keeps the memory a step frees, as training does on"
        " a CPU since issue 26); the memory runs with glibc's default thresholds."
    )
    mem_checkpoint = results["pgd10_at_lr_checkpoint"]["peak_mb"] / base["peak_mb"]
    time_checkpoint = results["pgd10_at_lr_checkpoint"]["step_ratio"]
    ckpt_mem_met = "yes" if mem_checkpoint <= TARGET_MEMORY_RATIO else "NO"
    ckpt_time_met = "yes" if time_checkpoint <= TARGET_TIME_RATIO else "NO"
    body = f"""## Training step: AT-LR vs the base methods ({args.device})

Model `{args.model}`, batch {args.batch}, eps {EPS}, one torch thread. AT-LR regularizes one MVL probe
(index 2) with gamma 0.1. *Interleaved*: the configurations take turns step by step on the same batch in
one process, in a shuffled order each round ({args.rounds} rounds after 2 warm-up ones); the ratio is the
median over rounds of each round's ratio to PGD-10 AT: the ratio the target refers to. *Trainer*: each
configuration alone in a fresh process under a Lightning `Trainer` ({args.steps} steps, median after
{args.warmup}); noisier, since the runs happen at different times.{malloc_note} Memory: {memory_kind}
of another fresh Trainer run per configuration at batch {args.memory_batch} (3 steps), so that activations
dominate.

| configuration | interleaved ms/step | ratio | Trainer ms/step | ratio | peak MiB | memory ratio |
|---|---:|---:|---:|---:|---:|---:|
{rows}

| target | value | bound | met |
|---|---:|---:|:---:|
| AT-LR / PGD-10 AT step time | {time_ratio:.3f} | <= {TARGET_TIME_RATIO} (floor 12/11 = 1.091) | {time_met} |
| AT-LR / PGD-10 AT peak memory | {mem_ratio:.2f} | <= {TARGET_MEMORY_RATIO} | {mem_met} |
| AT-LR, `checkpoint_clean` / PGD-10 AT step time | {time_checkpoint:.3f} | <= {TARGET_TIME_RATIO} | {ckpt_time_met} |
| AT-LR, `checkpoint_clean` / PGD-10 AT peak memory | {mem_checkpoint:.2f} | <= {TARGET_MEMORY_RATIO} | {ckpt_mem_met} |

Reading the ratios: the exact AT-LR gradient needs a clean forward and backward (with weight gradients)
up to the deepest MVL probe. Probe 2 of model B (`features.relu3`) sits after all three convolutions, so
that is almost a full training pass on top of PGD-10 AT's 10 attack steps (input gradients only, which
are cheaper) plus one training pass: about 1.13 on a CPU, above the 12/11 that assumes equal passes.
A shallow probe (`pgd10_at_lr_probe0`) or `stop_clean_grad=true` (clean branch without gradient) cost less.
Memory follows the same logic: the clean branch's activations stay alive for the backward. With
`regularizer.checkpoint_clean=true` they are recomputed in the backward instead (same gradient, tested):
memory close to PGD-10 AT for one more partial forward of time.

MART (`mart`) costs what TRADES costs: 10 attack steps plus a clean and an adversarial training pass.
AWP (`*_awp`, gamma 5e-3) adds one forward and backward of the proxy copy per step with the base loss
(two forwards for TRADES), plus copying the weights into the proxy and back: expect about +2/11 over
its base for PGD-10 AT. Its memory adds the proxy's weights, gradients and activations.
"""
    write_section(f"train_step_{args.device}", body)
    print(body)


#: glibc's mmap threshold for the ``--only --memory`` runs: fixed (not raised by every free, as glibc does by
#: default), so that every feature map above it is returned on free and the peak RSS follows the live
#: tensors; repeated runs then agree within 1-2 MiB (tens of MiB apart with the default).
MEMORY_RUN_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def fresh_process_run(
    args: argparse.Namespace, name: str, batch: int, steps: int, warmup: int, env: dict[str, str] | None = None,
    malloc: str = "default",
) -> dict[str, float]:
    """:func:`run_one` of ``name`` in a fresh Python process (so that its peak RSS is its own), with
    ``env`` added to the environment and glibc's thresholds as ``malloc`` says (``default``: untouched)."""
    command = [sys.executable, __file__, "--config", name, "--model", args.model, "--batch", str(batch),
               "--steps", str(steps), "--warmup", str(warmup), "--device", args.device, "--malloc", malloc]
    if args.input_size is not None:
        command += ["--input-size", str(args.input_size)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved_subset(args: argparse.Namespace) -> None:
    """Interleaved step times of ``args.only`` (plus their bases) in their own section of RESULTS.md,
    with ``--memory`` also each row's fresh-process peak memory and its ratio to the base."""
    names: list[str] = []
    for name in args.only:
        for wanted in (base_of(name), name):
            if wanted not in names:
                names.append(wanted)
    step_times = interleaved_step_times(args.model, args.batch, args.rounds + 2, args.device, names,
                                        input_size=args.input_size)
    if args.section == "mart_awp" and not args.memory:
        mart_awp_section(args, step_times)
        return
    peaks = {name: fresh_process_run(args, name, args.memory_batch, args.memory_steps, 1, MEMORY_RUN_ENV)["peak_mb"]
             for name in names} if args.memory else {}
    memory_kind = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS growth during fit"
    rows = []
    for name, (median, ratio) in step_times.items():
        memory = (f" {peaks[name]:.0f} | {peaks[name] / peaks[base_of(name)]:.2f} |" if peaks else "")
        rows.append(f"| {name} | {base_of(name)} | {median * 1000:.1f} | {ratio:.3f} |{memory}")
    title, notes = ONLY_SECTIONS[args.section]
    header = "| configuration | base | interleaved ms/step | ratio to base |"
    header += " peak MiB | memory ratio to base |\n|---|---|---:|---:|---:|---:|" if peaks else "\n|---|---|---:|---:|"
    shape = "x".join(str(v) for v in input_shape(args.model, args.input_size))
    memory_text = (f"Memory: {memory_kind} of a fresh Trainer run per configuration at batch {args.memory_batch} "
                   f"({args.memory_steps} steps), so that activations dominate; glibc's mmap threshold fixed at "
                   f"128 KiB (`MALLOC_MMAP_THRESHOLD_`) so that the peak RSS follows the live tensors (repeated runs "
                   f"agree within 1-2 MiB)." if peaks else "No memory runs.")
    body = f"""## {title} ({args.device})

Model `{args.model}` on random {shape} inputs, batch {args.batch}, eps {EPS}, one torch thread. The
configurations take turns step by step on the same batch in a shuffled order each round ({args.rounds}
rounds after 2 warm-up ones); ratio = median over rounds of each round's ratio to the row's base.{malloc_line(args)}
{memory_text}

{header}
{chr(10).join(rows)}

{notes}
"""
    write_section(f"train_step_{args.device}_{args.section}", body)
    print(body)


def malloc_line(args: argparse.Namespace) -> str:
    """The sentence of an ``--only`` section that says how glibc's thresholds were set for the timings."""
    if args.device != "cpu":
        return ""
    if args.malloc == "retain":
        return "\nTimed with freed memory retained (`--malloc retain`, as training does on a CPU since issue 26)."
    return "\nTimed with glibc's default malloc thresholds (`--malloc default`, as before issue 26)."


#: ``--section``: title and closing notes of the ``--only`` sections.
ONLY_SECTIONS = {
    "mart_awp": ("Training step: MART and AWP vs PGD-10 AT, interleaved only", ""),
    "lr0_variants": (
        "Training step: the LR-L0 variants of issue 21 vs their MART and PGD bases (digits settings)",
        "LR-L0: lambda 1 on the first activation probe (`features.relu1`), the attacks of the digits runs\n"
        "(7 steps of 0.03 at eps 0.1). `_stopgrad`: `regularizer.stop_clean_grad=true`; `_pairwise`:\n"
        "`regularizer.measure=relative_error_pairwise`. Expected from the passes: the exact term adds a clean\n"
        "forward up to `relu1` and its backward (with weight gradients) to the base's 7 attack steps and\n"
        "training pass(es); `stop_clean_grad` drops that backward for PGD (its clean forward then runs without\n"
        "a graph) but not for MART, whose loss needs the clean logits and so a full clean forward with\n"
        "gradient anyway; the pairwise measure only adds a per-sample norm of the shifted clean batch.",
    ),
}


def mart_awp_section(args: argparse.Namespace, step_times: dict[str, tuple[float, float]]) -> None:
    """The ``mart_awp`` section, as it has always been written."""
    rows = "\n".join(f"| {name} | {median * 1000:.1f} | {ratio:.3f} |" for name, (median, ratio) in step_times.items())
    body = f"""## Training step: MART and AWP vs PGD-10 AT, interleaved only ({args.device})

Model `{args.model}`, batch {args.batch}, eps {EPS}, one torch thread; the configurations of the table above
(same definitions), taking turns step by step on the same batch in a shuffled order each round
({args.rounds} rounds after 2 warm-up ones); ratio = median over rounds of each round's ratio to PGD-10
AT.{malloc_line(args)}
No fresh-process or memory runs in this section.

| configuration | interleaved ms/step | ratio |
|---|---:|---:|
{rows}

Expected from the passes: MART as TRADES (10 attack steps with input gradients only, then a clean and an
adversarial training pass); AWP adds one forward and backward of the proxy copy with weight gradients
(two forwards for TRADES) plus two weight copies, about +2/11 over PGD-10 AT.
"""
    write_section(f"train_step_{args.device}_mart_awp", body)
    print(body)


def stats_in_fresh_process(args: argparse.Namespace, names: list[str], malloc: str) -> dict[str, dict[str, float]]:
    """:func:`interleaved_step_stats` of ``names`` in a fresh process with ``--malloc malloc`` (glibc's
    thresholds, once changed, stay changed for the process)."""
    command = [sys.executable, __file__, "--stats-json", *names, "--model", args.model, "--batch", str(args.batch),
               "--rounds", str(args.rounds), "--device", args.device, "--malloc", malloc]
    if args.input_size is not None:
        command += ["--input-size", str(args.input_size)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def live_tensor_peak_mb(name: str, model_name: str, batch: int, input_size: int | None = None) -> float | None:
    """Peak of the bytes held by live CPU tensors (MiB) during one training step (attack, outer loss,
    backward, optimizer step) after a warm-up step, from ``torch.profiler``'s memory timeline: what the
    step needs, whatever the allocator keeps or returns. ``None`` where this torch's profiler lacks the
    timeline (a private API)."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    torch.manual_seed(313)
    shape = input_shape(model_name, input_size)
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    model = create_model(model_name, num_classes=10, in_channels=shape[0], input_size=shape[1])
    module = LSARegularizedModule(model, check_finite=False, **ALL_CONFIGS[name]())
    optimizer = module.configure_optimizers()

    def step(index: int) -> None:
        loss = module.training_step((x, y), index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        step(0)
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                         with_stack=True) as prof:
                step(1)
            timeline = prof._memory_profile().timeline
        except Exception:  # a private API: report nothing rather than fail the benchmark
            return None
    live = peak = 0
    for _, action, _, size in timeline:
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak / 2**20


#: The rows of the ``--step-cost`` section: PGD-10 AT, AT-LR on probe 2 and its two cheaper variants.
STEP_COST_ROWS = ["pgd10_at", "pgd10_at_lr", "pgd10_at_lr_checkpoint", "pgd10_at_lr_stopgrad"]


def step_cost_section(args: argparse.Namespace) -> None:
    """Issue 26: AT-LR's step time over PGD-10 AT's (fastest step and median per round), under glibc's
    default thresholds and with freed memory retained, each in its own process; peak memory per row
    (RSS growth of a fresh Trainer run, both malloc modes, and the live tensors of one step); the load
    average before and after."""
    load_before = os.getloadavg()
    timings = {malloc: stats_in_fresh_process(args, STEP_COST_ROWS, malloc) for malloc in ("default", "retain")}
    memory = {}
    for name in STEP_COST_ROWS:
        memory[name] = {
            malloc: fresh_process_run(args, name, args.memory_batch, args.memory_steps, 1, malloc=malloc)["peak_mb"]
            for malloc in ("default", "retain")
        }
        memory[name]["live"] = live_tensor_peak_mb(name, args.model, args.memory_batch, args.input_size)
    load_after = os.getloadavg()
    time_rows, memory_rows = [], []
    for malloc in ("default", "retain"):
        for name in STEP_COST_ROWS:
            row = timings[malloc][name]
            time_rows.append(f"| {name} | {malloc} | {row['fastest_s'] * 1000:.1f} | {row['median_s'] * 1000:.1f} | "
                             f"{row['fastest_ratio']:.3f} | {row['ratio']:.3f} | {row['faults']:.0f} |")
    for name in STEP_COST_ROWS:
        cells = []
        for kind in ("default", "retain", "live"):
            value, base = memory[name][kind], memory["pgd10_at"][kind]
            cells.append("n/a" if value is None or base is None else f"{value:.0f} | {value / base:.2f}")
        memory_rows.append(f"| {name} | {' | '.join(cells)} |")
    lr, ckpt = timings["retain"]["pgd10_at_lr"], timings["retain"]["pgd10_at_lr_checkpoint"]
    fastest_met = "yes" if lr["fastest_ratio"] <= TARGET_STEP_COST_RATIO else "NO"
    median_met = "yes" if lr["ratio"] <= TARGET_STEP_COST_RATIO else "NO"
    memory_ratio = memory["pgd10_at_lr"]["default"] / memory["pgd10_at"]["default"]
    memory_met = "yes" if memory_ratio <= TARGET_MEMORY_RATIO else "NO"
    loads = ", ".join(f"{v:.2f}" for v in load_before), ", ".join(f"{v:.2f}" for v in load_after)
    body = f"""## Training step cost of AT-LR (issue 26) ({args.device})

Model `{args.model}`, batch {args.batch}, eps {EPS}, one torch thread, the configurations of the first
training-step table. Timing: the four rows take turns step by step on the same batch in a shuffled order each
round ({args.rounds} rounds after 2 warm-up ones), once in a process with glibc's default malloc thresholds
(`default`) and once in a process where glibc keeps the memory a step frees (`retain`:
`lsa_train.training.allocator.retain_freed_memory`, which `LSARegularizedModule` applies at fit start on a
CPU since issue 26). *fastest*: the fastest step and its ratio to PGD-10 AT's fastest step; *median*: the
median step and the median over rounds of each round's ratio to PGD-10 AT; *faults*: median minor page faults
per step.

| configuration | malloc | fastest ms | median ms | fastest ratio | median ratio | faults / step |
|---|---|---:|---:|---:|---:|---:|
{chr(10).join(time_rows)}

Memory at batch {args.memory_batch}: peak RSS growth of a fresh Trainer run per row ({args.memory_steps} steps)
under each malloc mode (`default` is the method of the first table), and the peak of the bytes held by live
tensors in one step, from `torch.profiler`'s memory timeline (what the step needs, whatever the allocator
keeps); MiB and ratio to PGD-10 AT.

| configuration | peak RSS, default | ratio | peak RSS, retain | ratio | live tensors | ratio |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(memory_rows)}

| target | value | bound | met |
|---|---:|---:|:---:|
| AT-LR / PGD-10 AT, fastest step (retain) | {lr['fastest_ratio']:.3f} | <= {TARGET_STEP_COST_RATIO} | {fastest_met} |
| AT-LR / PGD-10 AT, median per round (retain) | {lr['ratio']:.3f} | <= {TARGET_STEP_COST_RATIO} | {median_met} |
| AT-LR / PGD-10 AT, peak RSS (default) | {memory_ratio:.2f} | <= {TARGET_MEMORY_RATIO} | {memory_met} |
| `checkpoint_clean` / AT-LR, median step (retain) | {ckpt['median_s'] / lr['median_s']:.3f} | - | - |

Load average (1, 5, 15 min) before the runs: {loads[0]}; after: {loads[1]}.
"""
    write_section(f"train_step_{args.device}_step_cost", body)
    print(body)


def profile_steps(args: argparse.Namespace) -> None:
    """Prints where the steps of ``args.profile`` spend their time: ``torch.profiler`` (CPU) over 5 rounds
    after 2 warm-up ones, the configurations taking turns; per configuration the phases (attack, outer
    forward and loss, backward, optimizer step) and the ops by self time."""
    import warnings

    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(1)
    torch.manual_seed(313)
    shape = input_shape(args.model, args.input_size)
    x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
    runs = {}
    for name in args.profile:
        model = create_model(args.model, num_classes=10, in_channels=shape[0], input_size=shape[1])
        module = LSARegularizedModule(model, check_finite=False, **ALL_CONFIGS[name]())
        runs[name] = (module, module.configure_optimizers())

    def step(name: str, index: int) -> None:
        module, optimizer = runs[name]
        with record_function(f"{name}/step"):
            with record_function(f"{name}/1 attack"):
                mvl = module._active_mvl(x)
                x_adv = module.attack(module.fast_model, x, y)
            with record_function(f"{name}/2 outer forward + loss"):
                loss = module._outer_step(x, y, x_adv, mvl, index)
            with record_function(f"{name}/3 backward"):
                loss.backward()
            with record_function(f"{name}/4 optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for index in range(2):
            for name in runs:
                step(name, index)
        profiles = {}
        for name in runs:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for index in range(5):
                    step(name, index)
            profiles[name] = prof
    for name, prof in profiles.items():
        averages = prof.key_averages()
        print(f"== {name}: ms per step")
        for event in sorted(averages, key=lambda e: e.key):
            if event.key.startswith(f"{name}/"):
                print(f"  {event.key.split('/', 1)[1]:28s} {event.cpu_time_total / 1000 / event.count:9.2f}")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
