"""Outer-minimization losses of adversarial training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``ce``: cross-entropy on adversarial examples (Madry et al. 2018); ``trades``: clean CE plus
#: beta * KL(clean || adversarial) (Zhang et al. 2019); ``normal``: clean CE, no attack.
BASE_LOSSES = ("ce", "trades", "normal")


def check_base_loss(name: str) -> str:
    if name not in BASE_LOSSES:
        raise ValueError(f"unknown base loss {name!r}; choose one of {list(BASE_LOSSES)}")
    return name


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(clean) || softmax(adv))`` averaged over the batch, in float32."""
    return F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1), reduction="batchmean"
    )


def base_loss(
    name: str,
    labels: torch.Tensor,
    logits_adv: torch.Tensor | None,
    logits_clean: torch.Tensor | None = None,
    trades_beta: float = 6.0,
) -> torch.Tensor:
    """The base loss ``J`` of the outer minimization; logits ``(N, K)``, labels ``(N,)``.

    Raises:
        ValueError: An unknown ``name``, or logits that ``name`` needs are missing (``normal``:
            clean; ``ce``: adversarial; ``trades``: both).
    """
    check_base_loss(name)
    needed = {"normal": ("clean",), "ce": ("adversarial",), "trades": ("clean", "adversarial")}[name]
    given = {"clean": logits_clean, "adversarial": logits_adv}
    missing = [kind for kind in needed if given[kind] is None]
    if missing:
        raise ValueError(f"base loss {name!r} needs {' and '.join(missing)} logits, got None")
    if name == "normal":
        return F.cross_entropy(logits_clean.float(), labels)  # type: ignore[union-attr]
    if name == "ce":
        return F.cross_entropy(logits_adv.float(), labels)  # type: ignore[union-attr]
    assert logits_clean is not None and logits_adv is not None  # checked above; narrows the types
    return F.cross_entropy(logits_clean.float(), labels) + trades_beta * trades_kl(logits_clean, logits_adv)
