"""Losses the attacks maximize. All take logits ``(N, K)`` and return float32 values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy_per_sample(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of every sample, shape ``(N,)``."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini-Wagner margin of every sample, shape ``(N,)``: ``max_{i != y} z_i - z_y``.

    Positive exactly when the sample is misclassified; ascending it pushes the best other logit
    above the true one without the saturation of the cross-entropy (Carlini & Wagner, 2017).

    Args:
        logits: Logits, shape ``(N, K)`` with ``K >= 2``.
        labels: True classes, shape ``(N,)``, int64.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"the margin loss needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    is_true = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
    best_other = logits.masked_fill(is_true, float("-inf")).amax(dim=1)
    return best_other - true_logit


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of Logits Ratio loss of every sample, shape ``(N,)`` (Croce & Hein, 2020).

    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))`` with ``z_(k)`` the k-th largest logit; it is
    invariant to shifting and rescaling the logits. Needs at least three classes.

    Args:
        logits: Logits, shape ``(N, K)`` with ``K >= 3``.
        labels: True classes, shape ``(N,)``, int64.
    """
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got logits of shape {tuple(logits.shape)}")
    sorted_logits, order = logits.sort(dim=1)
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_true = order[:, -1] == labels
    best_other = sorted_logits[:, -2].where(top_is_true, sorted_logits[:, -1])
    scale = sorted_logits[:, -1] - sorted_logits[:, -3] + 1e-12
    return -(true_logit - best_other) / scale


def kl_to_clean(adv_logits: Tensor, clean_log_probs: Tensor) -> Tensor:
    """``sum_n KL(p_clean_n || p_adv_n)``, the TRADES inner objective (a scalar).

    Args:
        adv_logits: Logits of the perturbed inputs, shape ``(N, K)``.
        clean_log_probs: Log-probabilities of the clean inputs, shape ``(N, K)``, detached.
    """
    return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_log_probs, reduction="sum", log_target=True)
