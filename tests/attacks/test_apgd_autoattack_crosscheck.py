"""Cross-check of our APGD against the reference ``APGDAttack`` of pyautoattack 0.2.0 (digits).

The reference attacks only the clean-correct samples and seeds the global RNG with its
``seed``; run on those samples with the same seed, our APGD draws the same random start and
must reach the same robust accuracy (within one percentage point; on CPU it is identical).
"""

from __future__ import annotations

import pytest
import torch

from lsa_train.attacks import APGD

autopgd = pytest.importorskip(
    "pyautoattack.autopgd_base", reason="pyautoattack (eval extra) is needed for the cross-check"
)

TOLERANCE = 0.01  # one percentage point


@pytest.mark.filterwarnings("ignore:there are .* points with zero gradient")
@pytest.mark.parametrize(
    ("norm", "eps", "loss"), [("linf", 0.1, "ce"), ("linf", 0.1, "dlr"), ("l2", 0.6, "ce")]
)
def test_apgd_matches_pyautoattack(norm, eps, loss, digits):
    model, x, y = digits
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    x, y = x[correct], y[correct]
    reference = autopgd.APGDAttack(
        model, n_iter=10, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, seed=3, loss=loss, device="cpu"
    )
    with torch.random.fork_rng(), torch.no_grad():  # the reference reseeds the global RNG
        theirs = reference.perturb(x, y)
    ours = APGD(eps, steps=10, norm=norm, loss=loss, seed=3)(model, x, y)
    with torch.no_grad():
        robust_theirs = (model(theirs).argmax(dim=1) == y).float()
        robust_ours = (model(ours).argmax(dim=1) == y).float()
    assert 0.2 <= robust_theirs.mean() <= 0.8
    assert abs(robust_ours.mean() - robust_theirs.mean()) <= TOLERANCE
    assert (robust_ours == robust_theirs).float().mean() >= 0.99  # sample by sample
