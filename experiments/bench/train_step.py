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

``--only`` rows are timed against their own base (``BASE_OF``: the LR-L0 variants against MART-7 or
PGD-7 on the digits settings, every other row against PGD-10 AT), which is added to the run.
"""

from __future__ import annotations

import argparse
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

TARGET_TIME_RATIO = 1.12  # AT-LR / PGD-AT; the floor is 12/11 = 1.09 (one more forward/backward)
TARGET_MEMORY_RATIO = 1.3
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


def run_one(
    name: str, model_name: str, batch: int, steps: int, warmup: int, device: str, input_size: int | None = None
) -> dict[str, float]:
    torch.set_num_threads(1)  # steadier medians on a shared CPU; the ratios are what count
    torch.manual_seed(313)
    shape = input_shape(model_name, input_size)
    x = torch.rand(batch * 4, *shape)
    y = torch.randint(0, 10, (batch * 4,))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    model = create_model(model_name, num_classes=10, in_channels=shape[0], input_size=shape[1])
    module = LSARegularizedModule(model, check_finite=False, **ALL_CONFIGS[name]())
    timer = StepTimer(torch.device(device))
    trainer = L.Trainer(
        accelerator=device, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], limit_val_batches=0,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.fit(module, loader)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {"median_s": statistics.median(timer.times[warmup:]), "peak_mb": peak}


def interleaved_step_times(
    model_name: str, batch: int, rounds: int, device: str, names: list[str] | None = None,
    input_size: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Per configuration: median step time and median ratio to its base (:func:`base_of`, PGD-10 AT
    unless set), the configurations taking turns step by step on the same batch in a shuffled order
    each round, so that machine noise hits them alike (``training_step`` + backward + optimizer step).
    The ratio is taken within each round and then the median over rounds, which cancels slow drifts of
    the machine's speed. ``names`` must hold each row's base."""
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
                start = time.perf_counter()
                loss = module.training_step((x, y), step)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                timer._sync()
                times[name].append(time.perf_counter() - start)
    return {
        name: (
            statistics.median(values[2:]),
            statistics.median(v / b for v, b in zip(values[2:], times[base_of(name)][2:])),
        )
        for name, values in times.items()
    }


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
    args = parser.parse_args()
    if args.config:
        print(json.dumps(run_one(args.config, args.model, args.batch, args.steps, args.warmup, args.device,
                                 args.input_size)))
        return
    if args.only:
        interleaved_subset(args)
        return
    results: dict[str, dict[str, float]] = {}

    def fresh_run(name: str, batch: int, steps: int, warmup: int) -> dict[str, float]:
        return fresh_process_run(args, name, batch, steps, warmup)

    for name in CONFIGS:
        results[name] = fresh_run(name, args.batch, args.steps, args.warmup)
        results[name]["peak_mb"] = fresh_run(name, args.memory_batch, 3, 1)["peak_mb"]
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
{args.warmup}); noisier, since the runs happen at different times. Memory: {memory_kind} of another
fresh Trainer run per configuration at batch {args.memory_batch} (3 steps), so that activations dominate.

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
    args: argparse.Namespace, name: str, batch: int, steps: int, warmup: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    """:func:`run_one` of ``name`` in a fresh Python process (so that its peak RSS is its own), with
    ``env`` added to the environment."""
    command = [sys.executable, __file__, "--config", name, "--model", args.model, "--batch", str(batch),
               "--steps", str(steps), "--warmup", str(warmup), "--device", args.device]
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
rounds after 2 warm-up ones); ratio = median over rounds of each round's ratio to the row's base.
{memory_text}

{header}
{chr(10).join(rows)}

{notes}
"""
    write_section(f"train_step_{args.device}_{args.section}", body)
    print(body)


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
({args.rounds} rounds after 2 warm-up ones); ratio = median over rounds of each round's ratio to PGD-10 AT.
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


if __name__ == "__main__":
    main()
