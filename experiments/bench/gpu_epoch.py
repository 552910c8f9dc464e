"""Benchmark: ResNet-18 PGD-10 AT epoch time on CIFAR-10-sized data, with and without the LSA term.

Four configurations under a Lightning ``Trainer``: PGD-10 AT and AT-LR (PGD-10 AT + LSA term on one
fixed MVL probe, the paper's LR-L2 setting, no refresh), each in float32 and in bf16 autocast with
``channels_last`` and cuDNN autotuning. The data are random tensors of CIFAR-10's shape (50k
3x32x32 images, 10 classes): the time of an epoch does not depend on the pixel values, and the
machines that run this have no internet. The last of ``--epochs`` epochs is timed (the first pays
for cuDNN autotuning). Writes the ``gpu_epoch`` section of RESULTS.md.

Without a CUDA device it records nothing, unless ``--smoke`` asks for a tiny CPU run that only
checks the script works.

Usage:
    python experiments/bench/gpu_epoch.py [--samples 50000] [--epochs 2] [--batch 128]
"""

from __future__ import annotations

import argparse
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


def run(label: str, with_lr: bool, fast: bool, data: TensorDataset, args: argparse.Namespace) -> dict:
    L.seed_everything(0)
    module = LSARegularizedModule(
        create_model("resnet18", num_classes=10),
        attack=PGD(eps=EPS, alpha=2 / 255, steps=10),
        regularizer=LayerwiseRegularizer(0.1) if with_lr else None,
        mvl=[2] if with_lr else None,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
        channels_last=fast,
    )
    timer = EpochTimer()
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if fast and accelerator == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=args.epochs, precision="bf16-mixed" if fast else "32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[timer], default_root_dir="/tmp/lsa_gpu_epoch_bench",
    )
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=2,
                        pin_memory=accelerator == "cuda", persistent_workers=True)
    if accelerator == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, loader)
    torch.backends.cudnn.benchmark = False
    peak = torch.cuda.max_memory_allocated() / 2**30 if accelerator == "cuda" else float("nan")
    seconds = timer.seconds[-1]
    print(f"{label}: {seconds:.1f} s/epoch, peak {peak:.2f} GiB", flush=True)
    return {"label": label, "seconds": seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run; records nothing")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: the gpu_epoch section is left as it is")
        return
    if args.smoke:
        args.samples, args.epochs, args.batch = 64, 1, 32
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(args.samples, 3, 32, 32, generator=generator),
                         torch.randint(0, 10, (args.samples,), generator=generator))
    results = [run(label, with_lr, fast, data, args) for label, with_lr, fast in CONFIGS]
    if args.smoke:
        return
    base = {fast: r["seconds"] for r, (_, with_lr, fast) in zip(results, CONFIGS) if not with_lr}
    rows = "\n".join(
        f"| {r['label']} | {r['seconds']:.1f} | {r['seconds'] / base[fast]:.3f} | {r['peak_gib']:.2f} |"
        for r, (_, _, fast) in zip(results, CONFIGS)
    )
    speedup = results[0]["seconds"] / results[2]["seconds"]
    body = f"""## GPU: ResNet-18 PGD-10 AT epoch on CIFAR-10-sized data

{args.samples} random 3x32x32 images (CIFAR-10's shape; time does not depend on pixel values), batch
{args.batch}, PGD-10 Linf eps 8/255 step 2/255, SGD; AT-LR adds the LSA term (lambda 0.1) on probe 2 (fixed MVL,
no refresh). Epoch {args.epochs} of {args.epochs} timed, no validation.

| configuration | s / epoch | vs PGD-10 AT (same precision) | peak GiB |
|---|---:|---:|---:|
{rows}

bf16 + channels_last + cuDNN autotuning vs fp32, PGD-10 AT: {speedup:.2f}x faster.
"""
    write_section("gpu_epoch", body)
    print(body)


if __name__ == "__main__":
    main()
