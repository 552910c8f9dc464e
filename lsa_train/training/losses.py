"""Outer-minimization losses of adversarial training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``ce``: cross-entropy on adversarial examples (Madry et al. 2018); ``trades``: clean CE plus
#: beta * KL(clean || adversarial) (Zhang et al. 2019); ``mart``: boosted CE on adversarial examples
#: plus beta * KL(clean || adversarial) * (1 - p_clean[y]) (Wang et al. 2020); ``normal``: clean CE.
BASE_LOSSES = ("ce", "trades", "mart", "normal")


def check_base_loss(name: str) -> str:
    if name not in BASE_LOSSES:
        raise ValueError(f"unknown base loss {name!r}; choose one of {list(BASE_LOSSES)}")
    return name


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(clean) || softmax(adv))`` averaged over the batch, in float32."""
    return F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1), reduction="batchmean"
    )


def log_one_minus_top_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log(1 - max_{k != y} p_k)`` per sample ``(N,)``, from logits ``(N, K)``.

    Computed as ``logsumexp`` over the classes other than the top wrong one minus ``logsumexp``
    over all classes, so it stays finite (and its gradient too) when that probability is ~1,
    where the reference code needs its ``1.0001 - p + 1e-12`` guard.
    """
    masked = logits.scatter(1, labels[:, None], float("-inf"))
    top_other = masked.argmax(dim=1, keepdim=True)
    rest = logits.scatter(1, top_other, float("-inf"))
    return torch.logsumexp(rest, dim=1) - torch.logsumexp(logits, dim=1)


def mart_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """The MART outer loss (Wang et al., ICLR 2020), a float32 scalar.

    ``mean_n [ CE(z_adv_n, y_n) - log(1 - max_{k != y_n} p_adv_nk)
    + beta * KL(p_clean_n || p_adv_n) * (1 - p_clean_n[y_n]) ]``; gradients flow through both
    branches (the clean one also through the ``1 - p_clean[y]`` weight, as in the reference code).

    Args:
        logits_clean: Logits of the clean inputs ``(N, K)``, ``K >= 2``.
        logits_adv: Logits of the adversarial inputs ``(N, K)``.
        labels: True classes ``(N,)``, int64.
        beta: Weight of the KL term, ``>= 0``.
    """
    clean, adv = logits_clean.float(), logits_adv.float()
    boosted_ce = F.cross_entropy(adv, labels, reduction="none") - log_one_minus_top_other(adv, labels)
    log_p_clean = F.log_softmax(clean, dim=1)
    kl = (log_p_clean.exp() * (log_p_clean - F.log_softmax(adv, dim=1))).sum(dim=1)
    p_true = log_p_clean.gather(1, labels[:, None]).squeeze(1).exp()
    return (boosted_ce + beta * kl * (1.0 - p_true)).mean()


def base_loss(
    name: str,
    labels: torch.Tensor,
    logits_adv: torch.Tensor | None,
    logits_clean: torch.Tensor | None = None,
    trades_beta: float = 6.0,
    *,
    mart_beta: float = 6.0,
) -> torch.Tensor:
    """The base loss ``J`` of the outer minimization; logits ``(N, K)``, labels ``(N,)``.

    Raises:
        ValueError: An unknown ``name``, or logits that ``name`` needs are missing (``normal``:
            clean; ``ce``: adversarial; ``trades`` and ``mart``: both).
    """
    check_base_loss(name)
    needed = {"normal": ("clean",), "ce": ("adversarial",), "trades": ("clean", "adversarial"),
              "mart": ("clean", "adversarial")}[name]
    given = {"clean": logits_clean, "adversarial": logits_adv}
    missing = [kind for kind in needed if given[kind] is None]
    if missing:
        raise ValueError(f"base loss {name!r} needs {' and '.join(missing)} logits, got None")
    if name == "normal":
        return F.cross_entropy(logits_clean.float(), labels)  # type: ignore[union-attr]
    if name == "ce":
        return F.cross_entropy(logits_adv.float(), labels)  # type: ignore[union-attr]
    assert logits_clean is not None and logits_adv is not None  # checked above; narrows the types
    if name == "mart":
        return mart_loss(logits_clean, logits_adv, labels, mart_beta)
    return F.cross_entropy(logits_clean.float(), labels) + trades_beta * trades_kl(logits_clean, logits_adv)
