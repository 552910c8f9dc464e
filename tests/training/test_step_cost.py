"""Issue 26: what the training step no longer pays for (page faults, NaN checks), with results unchanged."""

from __future__ import annotations

import platform
import resource
import sys

import lightning as L
import pytest
import torch
from torchmetrics import MeanMetric

from lsa_train.attacks import PGD
from lsa_train.training import LayerwiseRegularizer, LSARegularizedModule, allocator
from lsa_train.training import module as module_file

IS_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


class FakeMallopt:
    """Records ``mallopt(param, value)`` calls; refuses mmap thresholds above ``mmap_cap``."""

    def __init__(self, mmap_cap: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.mmap_cap = mmap_cap

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        refused = param == allocator.M_MMAP_THRESHOLD and self.mmap_cap is not None and value > self.mmap_cap
        return 0 if refused else 1


@pytest.fixture
def fake_mallopt(monkeypatch) -> FakeMallopt:
    fake = FakeMallopt()
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "glibc_mallopt", lambda: fake)
    return fake


def test_retain_sets_both_thresholds_once(fake_mallopt):
    assert allocator.retain_freed_memory(1 << 28)
    assert fake_mallopt.calls == [(allocator.M_TRIM_THRESHOLD, 1 << 28), (allocator.M_MMAP_THRESHOLD, 1 << 28)]
    assert allocator.retain_freed_memory(1 << 20)  # already applied with a larger threshold: nothing to do
    assert len(fake_mallopt.calls) == 2


def test_retain_falls_back_to_a_capped_mmap_threshold(monkeypatch):
    fake = FakeMallopt(mmap_cap=32 << 20)
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "glibc_mallopt", lambda: fake)
    assert allocator.retain_freed_memory(1 << 30)
    assert fake.calls[-2:] == [(allocator.M_MMAP_THRESHOLD, 1 << 30), (allocator.M_MMAP_THRESHOLD, 32 << 20)]


def test_retain_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "glibc_mallopt", lambda: None)
    assert not allocator.retain_freed_memory()


@pytest.mark.parametrize("threshold", [0, -1, 2**31])
def test_retain_refuses_bad_thresholds(threshold):
    with pytest.raises(ValueError, match="threshold must lie in"):
        allocator.retain_freed_memory(threshold)


@pytest.mark.skipif(not IS_GLIBC, reason="glibc's malloc only")
def test_retained_memory_is_not_faulted_in_again():
    """A 64 MiB block freed and allocated again costs 16384 page faults every time under glibc's defaults
    (above its largest mmap threshold) and none once freed memory is retained. Changes this test process's
    malloc settings."""
    assert allocator.retain_freed_memory()

    def faults_of_one_block() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(16 << 20)  # 64 MiB, every page written
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # the first blocks still fault: torch's 64-byte-aligned requests do not fit the freed pieces until the heap
    # holds a few of them (5-8 blocks here, the way a training step's feature maps settle in its first steps)
    faults = [faults_of_one_block() for _ in range(16)]
    assert max(faults[-4:]) < 1000, faults  # of 16384 pages; a few for the interpreter's own allocations


def at_lr(mlp_a, **kwargs) -> LSARegularizedModule:
    return LSARegularizedModule(mlp_a, attack=PGD(eps=0.1, steps=2), regularizer=LayerwiseRegularizer(0.5), mvl=[1],
                                **kwargs)


@pytest.mark.parametrize("retain", [True, False])
def test_fit_on_a_cpu_retains_freed_memory_unless_told_not_to(tmp_path, monkeypatch, mlp_a, loaders, retain):
    calls: list[int] = []
    monkeypatch.setattr(module_file, "retain_freed_memory", lambda: calls.append(1) or True)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", fast_dev_run=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(at_lr(mlp_a, retain_cpu_memory=retain), *loaders)
    assert calls == ([1] if retain else [])


def test_accuracy_metrics_skip_the_nan_check_and_give_the_same_means(mlp_a):
    module = at_lr(mlp_a)
    metrics = [module.train_acc_clean, module.train_acc_adv, module.val_acc_clean, module.val_acc_robust,
               module.test_acc_robust, *module.test_acc_fgsm]
    assert all(metric.nan_strategy == "disable" for metric in metrics)  # no `.any()` host sync per update
    checked, unchecked = MeanMetric(), MeanMetric(nan_strategy="disable")
    for batch in (torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0] * 5)):
        checked.update(batch)
        unchecked.update(batch)
    assert torch.equal(checked.compute(), unchecked.compute())
