"""Benchmark: PreAct ResNet-18 PGD-10 AT epoch time on CIFAR-10-sized data, with and without the LSA term.

Four configurations of ``--model`` (default ``preact_resnet18``) under a Lightning ``Trainer``:
PGD-10 AT and AT-LR (PGD-10 AT + LSA term on one fixed MVL probe, the paper's LR-L2 setting, no
refresh), each in float32 and in bf16 autocast with ``channels_last`` and cuDNN autotuning. The data
are random tensors of CIFAR-10's shape (50k 3x32x32 images, 10 classes): the time of an epoch does
not depend on the pixel values, and the machines that run this have no internet. The last of
``--epochs`` epochs is timed (the first pays for cuDNN autotuning). Writes the ``gpu_epoch`` section
of RESULTS.md.

Without a CUDA device it records nothing, unless ``--smoke`` asks for a tiny CPU run that only
checks the script works.

Usage:
    python experiments/bench/gpu_epoch.py [--samples 50000] [--epochs 2] [--batch 128] [--model preact_resnet18]

``experiments/bench/gpu_check.py`` reuses its builders for the per-step GPU check.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from bench_report import write_section

from lsa_train.attacks import PGD
from lsa_train.models import create_model
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule

EPS = 8 / 255
CONFIGS = [  # (label, LSA term, fast settings)
    ("PGD-10 AT, fp32", False, False),
    ("AT-LR, fp32", True, False),
    ("PGD-10 AT, bf16 + channels_last", False, True),
    ("AT-LR, bf16 + channels_last", True, True),
]


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        self.seconds.append(time.perf_counter() - self._start)


def synthetic_cifar(samples: int, seed: int = 0) -> TensorDataset:
    """``samples`` random images ``(3, 32, 32)`` in [0, 1] with labels in 0..9 (CIFAR-10's shapes)."""
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(samples, 3, 32, 32, generator=generator),
                         torch.randint(0, 10, (samples,), generator=generator))


def build_module(
    model_name: str, with_lr: bool, fast: bool, *, compile_kwargs: dict | None = None,
    checkpoint_clean: bool = False, pgd_steps: int = 10,
) -> LSARegularizedModule:
    """PGD-``pgd_steps`` AT (Linf 8/255, step 2/255, SGD) of ``model_name``; with ``with_lr`` plus the LSA
    term (lambda 0.1) on probe 2 (the paper's LR-L2, fixed MVL); ``fast``: channels_last;
    ``compile_kwargs``: ``module.compile_model`` (``None``: eager)."""
    return LSARegularizedModule(
        create_model(model_name, num_classes=10),
        attack=PGD(eps=EPS, alpha=2 / 255, steps=pgd_steps),
        regularizer=LayerwiseRegularizer(0.1, checkpoint_clean=checkpoint_clean) if with_lr else None,
        mvl=[2] if with_lr else None,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        channels_last=fast,
        compile_model=compile_kwargs if compile_kwargs is not None else False,
        check_finite=False,
    )


def build_trainer(fast: bool, callbacks: list[L.Callback], **limits: int) -> L.Trainer:
    """A Trainer on the GPU if there is one (else the CPU): bf16 autocast and cuDNN autotuning when
    ``fast``, float32 otherwise; no logging, checkpoints or validation. ``limits``: e.g. ``max_steps``."""
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    limits.setdefault("max_epochs", 1)
    return L.Trainer(
        accelerator=accelerator, devices=1, precision="bf16-mixed" if fast else "32-true",
        benchmark=fast and accelerator == "cuda", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
        default_root_dir="/tmp/lsa_gpu_bench", **limits,
    )


def reset_cuda_memory() -> None:
    """Frees what earlier runs left (Trainer and module form reference cycles, so collect first)
    and resets the peak, so that ``max_memory_allocated`` measures the next run alone."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """``torch.cuda.max_memory_allocated`` in GiB since the last :func:`reset_cuda_memory` (NaN on a CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def run(label: str, with_lr: bool, fast: bool, data: TensorDataset, args: argparse.Namespace) -> dict:
    L.seed_everything(0)
    module = build_module(args.model, with_lr, fast)
    timer = EpochTimer()
    trainer = build_trainer(fast, [timer], max_epochs=args.epochs)
    cuda = torch.cuda.is_available()
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=2,
                        pin_memory=cuda, persistent_workers=True)
    reset_cuda_memory()
    trainer.fit(module, loader)
    peak = peak_gib()
    seconds = timer.seconds[-1]
    print(f"{label}: {seconds:.1f} s/epoch, peak {peak:.2f} GiB", flush=True)
    return {"label": label, "seconds": seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="preact_resnet18")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run; records nothing")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: the gpu_epoch section is left as it is")
        return
    if args.smoke:
        args.samples, args.epochs, args.batch, args.model = 64, 1, 32, "cnn_b"  # ResNet-18 is slow on a CPU
    data = synthetic_cifar(args.samples)
    results = [run(label, with_lr, fast, data, args) for label, with_lr, fast in CONFIGS]
    if args.smoke:
        return
    base = {fast: r["seconds"] for r, (_, with_lr, fast) in zip(results, CONFIGS) if not with_lr}
    rows = "\n".join(
        f"| {r['label']} | {r['seconds']:.1f} | {r['seconds'] / base[fast]:.3f} | {r['peak_gib']:.2f} |"
        for r, (_, _, fast) in zip(results, CONFIGS)
    )
    speedup = results[0]["seconds"] / results[2]["seconds"]
    body = f"""## GPU: {args.model} PGD-10 AT epoch on CIFAR-10-sized data

Model `{args.model}`, {args.samples} random 3x32x32 images (CIFAR-10's shape; time does not depend
on pixel values), batch {args.batch}, PGD-10 Linf eps 8/255 step 2/255, SGD; AT-LR adds the LSA term
(lambda 0.1) on probe 2 (fixed MVL, no refresh). Epoch {args.epochs} of {args.epochs} timed, no validation.

| configuration | s / epoch | vs PGD-10 AT (same precision) | peak GiB |
|---|---:|---:|---:|
{rows}

bf16 + channels_last + cuDNN autotuning vs fp32, PGD-10 AT: {speedup:.2f}x faster.
"""
    write_section("gpu_epoch", body)
    print(body)


if __name__ == "__main__":
    main()
