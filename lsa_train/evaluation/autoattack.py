"""AutoAttack robust accuracy through the reference implementation (package ``pyautoattack``).

AutoAttack (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690) runs an ensemble of
parameter-free attacks (APGD-CE, APGD-T, FAB-T, Square for ``version="standard"``) one after
the other on the samples still robust; a sample is robust only if it is classified correctly
clean and under every attack.

The reference package is optional: install it with ``pip install pyautoattack`` (or
``pip install lsa_train[eval]``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lsa_train.evaluation.utils import (
    FlatToImage,
    check_eps_value,
    eval_mode,
    frozen_parameters,
    isolated_rng,
    resolve_device,
)

logger = logging.getLogger(__name__)

#: AutoAttack versions accepted by :func:`autoattack_accuracy`.
AUTOATTACK_VERSIONS: tuple[str, ...] = ("standard", "plus", "rand", "custom")
#: Attack names of the reference implementation (for ``version="custom"``).
AUTOATTACK_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
#: Norm names of the reference implementation, by lower-case spelling.
_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
#: ``n_samples="auto"``: AutoAttack runs on every evaluated sample when there are at most this many ...
AUTO_ALL_UP_TO = 2000
#: ... and on a seeded stratified subset of this many otherwise (see :func:`lsa_train.evaluation.evaluate_robustness`).
AUTO_FALLBACK = 200
#: The reference implementation's logger (its progress messages and its sanity-check warnings).
_AA_LOGGER = "auto-attack"


def _import_autoattack() -> type:
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise ImportError(
            "AutoAttack evaluation needs the reference implementation: pip install pyautoattack "
            "(or pip install lsa_train[eval])"
        ) from err
    return AutoAttack


class _WarningCollector(logging.Handler):
    """Collects the messages of WARNING and above (pyautoattack's sanity checks)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


def _skipped_for_classes(attacks: Sequence[str], n_classes: int) -> dict[str, str]:
    """Attacks whose loss needs more classes than the model has (the reference code would crash)."""
    skipped: dict[str, str] = {}
    if n_classes < 3 and "apgd-dlr" in attacks:
        skipped["apgd-dlr"] = f"the DLR loss needs >= 3 classes, the model has {n_classes}"
    if n_classes < 4 and "apgd-t" in attacks:
        skipped["apgd-t"] = f"the targeted DLR loss needs >= 4 classes, the model has {n_classes}"
    return skipped


class _PerSampleTracker:
    """Mirrors the reference loop to learn which samples each attack broke first.

    ``run_standard_evaluation`` runs each attack on the samples still robust, in index order, in
    batches (``robust_flags.nonzero()`` taken once when the attack starts); the wrapped ``perturb``
    only sees those batches, so the tracker hands out the same indices in the same order. The result
    is checked against the final robust mask (see :func:`autoattack_accuracy`).
    """

    def __init__(self, clean_correct: Tensor) -> None:
        self.robust = clean_correct.clone()
        self.broken_by: dict[str, Tensor] = {}
        self._attack: str | None = None
        self._queue = torch.empty(0, dtype=torch.long)
        self._position = 0

    def next_indices(self, name: str, count: int) -> Tensor:
        if name != self._attack:  # a new attack starts on the samples robust so far
            self._attack, self._queue, self._position = name, self.robust.nonzero().flatten(), 0
        indices = self._queue[self._position : self._position + count]
        self._position += count
        return indices

    def record(self, name: str, indices: Tensor, broken: Tensor) -> None:
        mask = self.broken_by.setdefault(name, torch.zeros_like(self.robust))
        hit = indices[broken.cpu()] if indices.numel() == broken.numel() else indices[:0]
        mask[hit] = True
        self.robust[hit] = False


def _track_per_attack(
    adversary: Any, model: nn.Module, fooled: dict[str, int], tracker: _PerSampleTracker | None = None
) -> None:
    """Wraps the reference attacks' ``perturb`` to count, per attack, the samples it fools.

    AutoAttack runs each attack on the samples still robust, so ``fooled[name]`` is the number
    of samples first broken by ``name`` (and ``tracker``, if given, learns which). One extra forward
    pass per attacked batch.
    """

    def name_of(kind: str, attack: Any) -> str:
        if kind == "apgd":
            return "apgd-ce" if attack.loss == "ce" else "apgd-dlr"
        if kind == "fab":
            return "fab-t" if attack.targeted else "fab"
        return kind

    def wrap(kind: str, attack: Any) -> None:
        original: Callable[..., Tensor] = attack.perturb

        def perturb(x: Tensor, y: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
            name = name_of(kind, attack)  # read before the call: the attack's settings are set by then
            x_adv = original(x, y, *args, **kwargs)
            if y is not None:
                with torch.no_grad():
                    broken = model(x_adv).argmax(dim=1) != y.to(x_adv.device)
                fooled[name] = fooled.get(name, 0) + int(broken.sum().item())
                if tracker is not None:
                    tracker.record(name, tracker.next_indices(name, int(x.shape[0])), broken)
            return x_adv

        attack.perturb = perturb

    for kind, attr in (("apgd", "apgd"), ("apgd-t", "apgd_targeted"), ("fab", "fab"), ("square", "square")):
        if hasattr(adversary, attr):
            wrap(kind, getattr(adversary, attr))


def autoattack_sample_count(setting: int | str | None, n_evaluated: int) -> int:
    """How many of the ``n_evaluated`` samples AutoAttack runs on.

    Args:
        setting: An integer ``>= 1`` (that many), ``None`` (all) or ``"auto"`` (all when
            ``n_evaluated <= AUTO_ALL_UP_TO``, else :data:`AUTO_FALLBACK`); which ones is up to the caller
            (:func:`~lsa_train.evaluation.evaluate_robustness` draws a seeded stratified subset).
        n_evaluated: The samples evaluated (after any ``max_samples``).

    Raises:
        ValueError: Any other setting.
    """
    if setting is None:
        return n_evaluated
    if isinstance(setting, str):
        if setting.lower() != "auto":
            raise ValueError(f"n_samples must be an integer >= 1, null or 'auto', got {setting!r}")
        return n_evaluated if n_evaluated <= AUTO_ALL_UP_TO else min(AUTO_FALLBACK, n_evaluated)
    if isinstance(setting, bool) or int(setting) != setting or setting < 1:
        raise ValueError(f"n_samples must be an integer >= 1, null or 'auto', got {setting!r}")
    return min(int(setting), n_evaluated)


def _correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """``(n,)`` bool on the CPU: ``model`` classifies ``x`` correctly, in batches of ``batch_size``."""
    masks = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch_size):
            logits = model(x[lo : lo + batch_size].to(device))
            masks.append((logits.argmax(dim=1) == y[lo : lo + batch_size].to(device)).cpu())
    return torch.cat(masks)


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    *,
    attacks: Sequence[str] | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str | None = None,
    square_queries: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Robust accuracy under AutoAttack (reference implementation ``pyautoattack``).

    The model runs in eval mode with its parameters frozen (so FAB's ``backward`` leaves no
    ``.grad``); modes, ``requires_grad`` flags and the global RNG state are restored afterwards
    (the reference code reseeds the global RNG). Inputs that are not images ``(N, C, H, W)``
    are presented to the attacks as ``(N, 1, 1, D)`` images (Square Attack needs that shape).

    Models with fewer classes than an attack's loss needs get that attack skipped (listed in
    ``"skipped"``) instead of crashing: APGD-DLR needs 3 classes, APGD-T 4. With fewer than 10
    classes, APGD-T and FAB-T target the ``n_classes - 1`` other classes.

    Args:
        model: Classifier mapping ``x`` to logits ``(N, K)`` (logits, not probabilities).
        x: Inputs ``(N, ...)`` in ``[0, 1]``; moved to ``device`` batch by batch.
        y: Labels ``(N,)``, integer class indices.
        eps: Radius of the threat model, in input units (e.g. ``8/255`` Linf on CIFAR-10).
        norm: ``"Linf"``, ``"L2"`` or ``"L1"`` (case-insensitive). Default: ``"Linf"``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square-5000), ``"plus"``, ``"rand"``
            (APGD-CE/DLR with EOT, for randomized defenses) or ``"custom"`` (give ``attacks``).
        attacks: The attacks to run for ``version="custom"``, a subset of
            ``("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")``; e.g. ``["apgd-ce"]``
            (APGD-CE, 100 iterations, 5 restarts). Must be ``None`` for the other versions.
        n_samples: Evaluate the first ``n_samples`` samples only; ``None`` for all.
        seed: Seed of the attacks' random starts. Default: ``0``.
        batch_size: Batch size of the attacks. Default: ``250``.
        device: Where the attacks run; default: the model's device.
        square_queries: Overrides Square Attack's query budget (5000 in ``"standard"``).
        verbose: Print pyautoattack's progress messages to stderr.

    Returns:
        A dict with ``"robust_accuracy"`` (fraction in ``[0, 1]``), ``"clean_accuracy"``,
        ``"per_attack"`` (``{attack: robust accuracy after it}``, cumulative, in run order),
        ``"attacks"`` (the attacks run), ``"skipped"`` (``{attack: reason}``), ``"warnings"``
        (pyautoattack's sanity-check warnings, e.g. zero gradients), ``"n_samples"``, ``"eps"``,
        ``"norm"``, ``"version"``, ``"seed"`` and ``"seconds"``; for per-sample bookkeeping also
        ``"robust_mask"`` (``(n,)`` bool on the CPU: correct clean and under every attack) and
        ``"broken_by"`` (``{attack: (n,) bool}``, the samples each attack broke first; ``None`` if the
        reference loop could not be followed sample by sample, which is then logged).

    Raises:
        ImportError: If ``pyautoattack`` is not installed.
        ValueError: On a bad argument (unknown version / norm / attack, shapes).
    """
    auto_attack_cls = _import_autoattack()
    eps, norm_name, x, y, batch_size = _check_arguments(eps, norm, version, attacks, x, y, n_samples, batch_size)
    device = resolve_device(model, device)
    attacked, x = _as_images(model, x.detach().float())
    y = y.detach().long()
    start = time.perf_counter()
    with eval_mode(model), frozen_parameters(model), isolated_rng(device):
        adversary, skipped = _build_adversary(
            auto_attack_cls, attacked, x, eps, norm_name, version, attacks, seed, device, square_queries
        )
        run = _run_reference(adversary, attacked, x, y, batch_size, device, verbose)
    broken_by = _first_broken_by(run, adversary.attacks_to_run)
    per_attack = _per_attack_accuracy(run, adversary.attacks_to_run)
    for message in run.warnings:
        logger.warning("pyautoattack: %s", message)
    n = int(x.shape[0])
    return {
        "robust_accuracy": int(run.robust_mask.sum()) / n,
        "clean_accuracy": int(run.clean_mask.sum()) / n,
        "robust_mask": run.robust_mask,
        "broken_by": broken_by,
        "per_attack": per_attack,
        "attacks": list(adversary.attacks_to_run),
        "skipped": skipped,
        "warnings": list(run.warnings),
        "n_samples": n,
        "eps": eps,
        "norm": norm_name,
        "version": version,
        "seed": seed,
        "seconds": time.perf_counter() - start,
    }


# -- the phases of autoattack_accuracy, in the order it runs them ---------------------------------------------
def _check_arguments(
    eps: float,
    norm: str,
    version: str,
    attacks: Sequence[str] | None,
    x: Tensor,
    y: Tensor,
    n_samples: int | None,
    batch_size: int,
) -> tuple[float, str, Tensor, Tensor, int]:
    """Phase 1: refuses bad arguments with one line each, before anything runs.

    Returns:
        ``eps`` (input units), the reference's norm name (``"Linf"``, ``"L2"``, ``"L1"``), ``x`` ``(N, ...)`` and
        ``y`` ``(N,)`` cut to the first ``n_samples``, and ``batch_size`` as an ``int``.
    """
    eps = check_eps_value("eps", eps)
    norm_name = _NORMS.get(str(norm).lower())
    if norm_name is None:
        raise ValueError(f"norm must be one of 'Linf', 'L2', 'L1', got {norm!r}")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version must be one of {AUTOATTACK_VERSIONS}, got {version!r}")
    if version == "custom":
        if not attacks:
            raise ValueError('version="custom" needs a non-empty list of attacks, e.g. attacks=["apgd-ce"]')
        unknown = [a for a in attacks if a not in AUTOATTACK_ATTACKS]
        if unknown:
            raise ValueError(f"unknown AutoAttack attacks {unknown}; choose from {AUTOATTACK_ATTACKS}")
    elif attacks is not None:
        raise ValueError(f'attacks can only be chosen with version="custom", got version={version!r}')
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError("x must be a tensor (N, ...) and y a tensor (N,) of class indices")
    if n_samples is not None:
        if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be None or an integer >= 1, got {n_samples!r}")
        x, y = x[: int(n_samples)], y[: int(n_samples)]
    if x.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return eps, norm_name, x, y, int(batch_size)


def _as_images(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """Phase 2: the model and inputs as the attacks see them: images ``(N, C, H, W)`` as they are, other
    inputs ``(N, ...)`` as ``(N, 1, 1, D)`` images with the model wrapped to undo that (Square needs images)."""
    if x.ndim == 4:
        return model, x
    return FlatToImage(model, tuple(x.shape[1:])), FlatToImage.to_image(x)


def _build_adversary(
    auto_attack_cls: type,
    attacked: nn.Module,
    x: Tensor,
    eps: float,
    norm_name: str,
    version: str,
    attacks: Sequence[str] | None,
    seed: int,
    device: torch.device,
    square_queries: int | None,
) -> tuple[Any, dict[str, str]]:
    """Phase 3: the reference ``AutoAttack``, fitted to the model's number of classes ``K`` (one forward pass).

    Attacks whose loss needs more classes are dropped, the targeted attacks aim at no more than ``K - 1``
    classes, and Square gets ``square_queries`` queries if given.

    Returns:
        The adversary and ``{dropped attack: reason}``.
    """
    with torch.no_grad():
        n_classes = int(attacked(x[:1].to(device)).shape[1])
    adversary = auto_attack_cls(
        attacked,
        attacks=list(attacks) if version == "custom" and attacks is not None else None,
        device=device,
        eps=eps,
        norm=norm_name,
        seed=seed,
        version=version,
    )
    skipped = _skipped_for_classes(adversary.attacks_to_run, n_classes)
    adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a not in skipped]
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, n_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_classes - 1)
    if square_queries is not None:
        adversary.square.n_queries = int(square_queries)
    return adversary, skipped


@dataclass
class _ReferenceRun:
    """What the reference loop did (phase 4).

    Attributes:
        clean_mask: ``(N,)`` bool on the CPU: correct without attack.
        robust_mask: ``(N,)`` bool on the CPU: correct clean and under every attack.
        tracker: Which samples each attack broke first, as followed batch by batch.
        fooled: ``{attack: samples it broke first}``, counted from its own outputs.
        warnings: The reference's sanity-check warnings, each once.
    """

    clean_mask: Tensor
    robust_mask: Tensor
    tracker: _PerSampleTracker
    fooled: dict[str, int]
    warnings: list[str]


@contextmanager
def _reference_logging(verbose: bool) -> Iterator[_WarningCollector]:
    """Collects the reference's warnings (shown with its progress messages on stderr if ``verbose``).

    Restores its logger's handlers, level and propagation, and the trace function (pyautoattack's
    dynamic-defense check ends with ``sys.settrace(None)``), however the block ends.
    """
    aa_logger = logging.getLogger(_AA_LOGGER)
    collector = _WarningCollector()
    stream: logging.Handler | None = logging.StreamHandler() if verbose else None
    previous_level, previous_propagate = aa_logger.level, aa_logger.propagate
    previous_trace = sys.gettrace()
    aa_logger.addHandler(collector)
    if stream is not None:
        aa_logger.addHandler(stream)
        aa_logger.setLevel(logging.DEBUG)
    else:
        aa_logger.propagate = False  # its warnings are collected and re-logged by autoattack_accuracy, once
    try:
        yield collector
    finally:
        aa_logger.removeHandler(collector)
        if stream is not None:
            aa_logger.removeHandler(stream)
        aa_logger.setLevel(previous_level)
        aa_logger.propagate = previous_propagate
        sys.settrace(previous_trace)


def _run_reference(
    adversary: Any, attacked: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device, verbose: bool
) -> _ReferenceRun:
    """Phase 4: the clean pass and the reference ``run_standard_evaluation`` on ``x`` ``(N, C, H, W)``, ``y``
    ``(N,)``, in batches of ``batch_size``, following which samples each attack breaks first."""
    clean_mask = _correct(attacked, x, y, batch_size, device)  # the reference's own first pass, batched alike
    tracker = _PerSampleTracker(clean_mask)
    fooled: dict[str, int] = {}
    _track_per_attack(adversary, attacked, fooled, tracker)
    with _reference_logging(verbose) as collector:
        if adversary.attacks_to_run:
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        else:
            x_adv = x
        robust_mask = clean_mask & _correct(attacked, x_adv, y, batch_size, device)
    return _ReferenceRun(clean_mask, robust_mask, tracker, fooled, list(collector.messages))


def _first_broken_by(run: _ReferenceRun, attacks: Sequence[str]) -> dict[str, Tensor] | None:
    """Phase 5: ``{attack: (N,) bool}``, the samples each of ``attacks`` broke first; ``None`` (and a logged
    warning) when the followed samples disagree with the final robust mask."""
    broken_by = {a: run.tracker.broken_by.get(a, torch.zeros_like(run.clean_mask)) for a in attacks}
    if not torch.equal(run.tracker.robust, run.robust_mask):
        logger.warning("AutoAttack: the per-attack sample bookkeeping disagrees with the final robust mask; "
                       "the samples are credited to AutoAttack as a whole")
        return None
    return broken_by


def _per_attack_accuracy(run: _ReferenceRun, attacks: Sequence[str]) -> dict[str, float]:
    """Phase 6: ``{attack: robust accuracy after it}`` (fractions of ``N``), cumulative, in run order."""
    n = int(run.clean_mask.numel())
    per_attack: dict[str, float] = {}
    remaining = int(run.clean_mask.sum())
    for name in attacks:  # an attack that never ran (nothing left to break) broke 0
        remaining -= run.fooled.get(name, 0)
        per_attack[name] = remaining / n
    return per_attack
