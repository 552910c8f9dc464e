"""Attacks that know the defense: a masked gradient is found out, kappa 0 is PGD (and refused as an adaptive
attack), every attack has its own seed, the feature term is weighted per probe as the training term was."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from lsa_train.analysis import relative_error, select_probes
from lsa_train.attacks import PGD
from lsa_train.attacks.losses import margin_loss
from lsa_train.evaluation import (
    DEFAULT_KAPPAS,
    FeaturePGD,
    adaptive_attacks,
    autoattack_accuracy,
    evaluate_robustness,
    seeding,
)
from lsa_train.evaluation.seeding import attack_seed

QUICK = {"eps_grid": (0.0,), "masking_checks": False, "pgd_steps": 10}


def test_masked_gradient_is_found_by_the_transfer_attack_and_named(masked_moons, moons):
    # round(x * 4) / 4 in front: PGD's input gradient is zero, so it stalls at its random start; PGD on the
    # unmasked twin crafts examples that the quantized model misclassifies too
    attacks = adaptive_attacks(0.2, steps=10, restarts=2, kappas=(), transfer_source=moons.model, seed=0)
    assert [a.name for a in attacks] == ["pgd_ce_restarts", "pgd_margin", "transfer"]
    report = evaluate_robustness(masked_moons.model, masked_moons.batches(), 0.2, extra_attacks=attacks, **QUICK)
    assert report.worst_case_accuracy is not None
    assert report.worst_case_accuracy < report.pgd_accuracy - 0.2  # measured: 0.425 vs 0.82
    case = report.worst_case
    assert case["only_broken_by"]["transfer"] > 20 and case["first_broken_by"]["transfer"] > 20
    for name in ("pgd_ce_restarts", "pgd_margin"):  # the white-box attacks stall just as PGD does
        assert report.attacks[name]["accuracy"] > report.worst_case_accuracy + 0.2
    text = report.to_markdown()
    assert f"Broken by one attack alone: transfer {case['only_broken_by']['transfer']}." in text
    assert f"**{100 * report.worst_case_accuracy:.2f}%**" in text


def _relu_outputs(model: nn.Module, *batches: torch.Tensor) -> list[torch.Tensor]:
    """The digits MLP's ReLU output (``model[2]``, its one probe) for each batch."""
    outputs: list[torch.Tensor] = []
    hook = model[2].register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    hook.remove()
    return outputs


def test_feature_pgd_with_kappa_zero_is_pgd_and_with_kappa_attacks_the_probes(digits):
    model, x, y = digits.model, digits.x_test[:120], digits.y_test[:120]
    probes = select_probes(model, x[:1])  # the ReLU, probe "2"
    for p in model.parameters():  # the session's model is shared; this test asserts what our attacks leave
        p.grad = None
    model.train()  # the attack crafts in eval mode and gives the mode back
    try:
        for restarts in (1, 2):
            pgd = PGD(0.1, steps=10, restarts=restarts, seed=3)(model, x, y)
            kappa0 = FeaturePGD(0.1, probes, 0.0, steps=10, restarts=restarts, seed=3)(model, x, y)
            assert torch.equal(kappa0, pgd)  # same steps, starts and examples
        strong = FeaturePGD(0.1, probes, 10.0, steps=10, seed=3)(model, x, y)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # hooks removed
    assert all(p.grad is None for p in model.parameters())
    features = _relu_outputs(model, x, pgd, strong)
    # the feature term moves the representation at the probe further than PGD does
    moved_by_pgd = relative_error(features[0], features[1]).mean().item()
    moved_by_feature_pgd = relative_error(features[0], features[2]).mean().item()
    assert moved_by_feature_pgd > 1.05 * moved_by_pgd, (moved_by_feature_pgd, moved_by_pgd)


def test_every_attack_has_its_own_seed_so_none_retraces_pgd(digits):
    batches = digits.batches(100)[:2]
    probes = select_probes(digits.model, digits.x_test[:1])
    attacks = adaptive_attacks(0.1, steps=10, restarts=2, kappas=(1.0,), probes=probes, weights=1e-6,
                               transfer_source=digits.model, seed=5)
    seeds = {a.name: a.settings["seed"] for a in attacks}
    assert len(set(seeds.values())) == len(seeds) and 5 not in seeds.values()  # 5: the evaluation's PGD
    assert seeds == {name: attack_seed(5, name) for name in seeds}
    x, y = batches[0]
    pgd = PGD(0.1, steps=10, seed=5)(digits.model, x, y)
    examples = {a.name: a.attack(digits.model, x, y) for a in attacks}
    # a transfer from the model itself and a feature term of weight ~0 are PGD with another random start:
    # before, with the evaluation's seed, both returned exactly PGD's examples
    for name in ("transfer", "feature_pgd_kappa_1"):
        assert not torch.equal(examples[name], pgd), name
    for a, b in itertools.combinations(examples, 2):
        assert not torch.equal(examples[a], examples[b]), (a, b)
    report = evaluate_robustness(digits.model, batches, 0.1, extra_attacks=attacks, seed=5, **QUICK)
    assert report.attacks["pgd"]["settings"]["seed"] == 5
    assert report.attacks["feature_pgd_kappa_1"]["settings"]["probes"] == ["2"]
    assert report.attacks["feature_pgd_kappa_1"]["settings"]["probe_weights"] == {"2": 1e-6}
    assert report.attacks["pgd_ce_restarts"]["settings"]["restarts"] == 2
    assert report.worst_case_accuracy <= min(a["accuracy_on_common"] for a in report.attacks.values())


def test_attack_seeds_are_stable_across_processes_unlike_python_hash():
    import subprocess
    import sys

    script = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('s', sys.argv[1]); "
              "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
              "print(m.attack_seed(7, 'pgd_margin'), hash('pgd_margin'))")
    path = Path(seeding.__file__)
    runs = [subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": salt}).stdout.split() for salt in ("1", "2")]
    assert runs[0][1] != runs[1][1]  # Python's hash() changes with the process's salt ...
    assert runs[0][0] == runs[1][0] == str(attack_seed(7, "pgd_margin"))  # ... the attack seed does not
    assert attack_seed(7, "pgd") == 7 and attack_seed(8, "pgd_margin") != attack_seed(7, "pgd_margin")
    assert all(0 <= attack_seed(s, n) < 2**31 for s in range(3) for n in ("square", "transfer"))


def test_kappa_zero_is_refused_and_no_longer_in_the_default_grid(digits):
    probes = select_probes(digits.model, digits.x_test[:1])
    assert 0.0 not in DEFAULT_KAPPAS and DEFAULT_KAPPAS
    names = [a.name for a in adaptive_attacks(0.1, probes=probes)]
    assert names == ["pgd_ce_restarts", "pgd_margin", *(f"feature_pgd_kappa_{k:g}" for k in DEFAULT_KAPPAS)]
    with pytest.raises(ValueError, match=r"kappa 0 is plain PGD.*drop \[0\.0\]"):
        adaptive_attacks(0.1, kappas=(0.0, 1.0), probes=probes)


def test_margin_loss_is_best_other_minus_true_logit():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.5, 3.0, 1.0]], requires_grad=True)
    loss = margin_loss(logits, torch.tensor([0, 0]))
    assert loss.tolist() == [-1.0, 2.5]  # positive exactly when misclassified
    (grad,) = torch.autograd.grad(loss.sum(), [logits])
    assert grad.tolist() == [[-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]


def test_autoattack_gives_its_per_sample_mask_and_which_component_broke_each(digits):
    pytest.importorskip("pyautoattack", reason="AutoAttack evaluation needs pyautoattack")
    x, y = digits.x_test[:60], digits.y_test[:60]
    # a weak Square first, then APGD-CE on what is left: both break samples, over several batches each
    result = autoattack_accuracy(digits.model, x, y, 0.08, version="custom", attacks=["square", "apgd-ce"],
                                 batch_size=16, square_queries=20, seed=0)
    robust, broken = result["robust_mask"], result["broken_by"]
    assert robust.dtype == torch.bool and robust.shape == (60,)
    assert robust.float().mean().item() == pytest.approx(result["robust_accuracy"])
    assert broken is not None and set(broken) == {"apgd-ce", "square"}
    assert not (broken["apgd-ce"] & broken["square"]).any()
    with torch.no_grad():
        clean = digits.model(x).argmax(1) == y
    assert torch.equal(broken["apgd-ce"] | broken["square"], clean & ~robust)
    n_square, n_apgd = int(broken["square"].sum()), int(broken["apgd-ce"].sum())
    assert n_square > 0 and n_apgd > n_square  # measured: 4 and 22
    assert result["per_attack"]["square"] == pytest.approx((int(clean.sum()) - n_square) / 60)


def test_feature_pgd_refuses_no_probe_negative_kappa_and_bad_weights():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    probes = select_probes(model, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="at least one probe"):
        FeaturePGD(0.1, [], 1.0)
    with pytest.raises(ValueError, match="kappa"):
        FeaturePGD(0.1, probes, -1.0)
    with pytest.raises(ValueError, match=r"1 probes but 2 weights \[1\.0, 1\.0\]"):
        FeaturePGD(0.1, probes, 1.0, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"every probe weight is 0 \(\[0\.0\]\).*plain PGD"):
        FeaturePGD(0.1, probes, 1.0, weights=0.0)
    with pytest.raises(ValueError, match=r"finite numbers >= 0, got \[-1\.0\]"):
        FeaturePGD(0.1, probes, 1.0, weights=[-1.0])


def test_feature_pgd_weights_each_probe_as_the_training_term_did(digits):
    model, x, y = digits.model, digits.x_test[:120], digits.y_test[:120]
    probes = select_probes(model, x[:1], "learnable")  # the two Linear layers
    assert [p.name for p in probes] == ["1", "3"]

    def craft(kappa: float, chosen: list, weights: list[float]) -> torch.Tensor:
        return FeaturePGD(0.1, chosen, kappa, steps=10, seed=3, weights=weights)(model, x, y)

    first_only = craft(1.0, probes[:1], [2.0])
    # a probe of weight 0 (a lambda of 0 in the run) has no effect on the objective ...
    assert torch.equal(craft(1.0, probes, [2.0, 0.0]), first_only)
    # ... and one of weight > 0 has
    assert not torch.equal(craft(1.0, probes, [2.0, 2.0]), first_only)
    # the weight scales the term as kappa does: kappa 1 x lambda 2 is kappa 2 x lambda 1
    assert torch.equal(craft(2.0, probes[:1], [1.0]), first_only)
    assert FeaturePGD(0.1, probes, 1.0, weights=0.1).probe_weights == {"1": 0.1, "3": 0.1}  # one lambda for all
    assert FeaturePGD(0.1, probes, 1.0).probe_weights == {"1": 1.0, "3": 1.0}
    attacks = adaptive_attacks(0.1, kappas=(1.0,), probes=probes, weights=[0.5, 0.0])
    assert attacks[-1].settings["probe_weights"] == {"1": 0.5, "3": 0.0}
    assert attacks[-1].attack.probe_weights == {"1": 0.5, "3": 0.0}


def test_feature_pgd_on_the_pairwise_measure_moves_that_measure_and_takes_a_batch_of_one(digits):
    from lsa_train.analysis.measures import relative_error_pairwise

    model, x, y = digits.model, digits.x_test[:120], digits.y_test[:120]
    probes = select_probes(model, x[:1])
    attack = FeaturePGD(0.1, probes, 10.0, steps=10, seed=3, measure="relative_error_pairwise")
    assert "measure_name='relative_error_pairwise'" in repr(attack)
    pairwise = attack(model, x, y)
    plain = FeaturePGD(0.1, probes, 10.0, steps=10, seed=3)(model, x, y)
    # the two measures differ by a per-sample constant (the clean pair distance), so the examples differ
    # where that constant changes the balance with the cross-entropy
    assert not torch.equal(pairwise, plain)
    pgd = PGD(0.1, steps=10, seed=3)(model, x, y)
    features = _relu_outputs(model, x, pairwise, pgd)
    by_feature, by_pgd = (relative_error_pairwise(features[0], features[i]).mean().item() for i in (1, 2))
    assert by_feature > 1.05 * by_pgd, (by_feature, by_pgd)
    one = attack(model, x[:1], y[:1])  # no partner: attacked on the relative error
    assert one.shape == x[:1].shape and (one - x[:1]).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="unknown measure 'nope'"):
        FeaturePGD(0.1, probes, 1.0, measure="nope")
