"""Argument validation and the registry."""

from __future__ import annotations

import math

import pytest

from lsa_train.attacks import ATTACKS, PGD, Attack, NoAttack, create_attack, list_attacks, register_attack

EXPECTED = {
    "none": "NoAttack",
    "fgsm": "FGSM",
    "fgsm_rs": "FGSMRS",
    "pgd": "PGD",
    "pgd_l2": "PGDL2",
    "apgd": "APGD",
    "trades": "TRADESAttack",
    "mart": "MARTAttack",
}


def test_registry_contents():
    assert list_attacks() == sorted(EXPECTED)
    assert {key: cls.__name__ for key, cls in ATTACKS.items()} == EXPECTED
    for key, cls in ATTACKS.items():
        assert issubclass(cls, Attack) and cls.name == key


def test_create_attack_forwards_kwargs_and_ignores_case():
    atk = create_attack("PGD", eps=8 / 255, alpha=2 / 255, steps=7, restarts=2, craft_mode="train", seed=3)
    assert isinstance(atk, PGD)
    assert (atk.eps, atk.alpha, atk.steps, atk.restarts) == (8 / 255, 2 / 255, 7, 2)
    assert (atk.craft_mode, atk.seed, atk.num_forward_backward) == ("train", 3, 14)
    assert isinstance(create_attack("none"), NoAttack)


def test_unknown_attack_lists_the_choices():
    message = "unknown attack 'xyz'; choose one of " + str(sorted(EXPECTED)).replace("[", r"\[").replace(
        "]", r"\]"
    )
    with pytest.raises(ValueError, match=message):
        create_attack("xyz", eps=0.1)


def test_register_rejects_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_attack("pgd")(type("Other", (PGD,), {}))


BAD_ARGUMENTS = [
    ("fgsm", {"eps": -0.1}, r"eps must be a finite number >= 0, got -0.1"),
    ("pgd", {"eps": math.nan}, r"eps must be a finite number >= 0, got nan"),
    ("pgd", {"eps": math.inf}, r"eps must be a finite number >= 0, got inf"),
    ("pgd", {"eps": "8/255"}, r"eps must be a finite number >= 0, got '8/255'"),
    ("pgd", {"eps": 0.1, "alpha": 0.0}, r"alpha must be a finite number > 0, got 0.0"),
    ("pgd", {"eps": 0.1, "alpha": -1}, r"alpha must be a finite number > 0, got -1"),
    ("fgsm_rs", {"eps": 0.1, "alpha": 0}, r"alpha must be a finite number > 0, got 0"),
    ("trades", {"eps": 0.1, "alpha": -0.5}, r"alpha must be a finite number > 0, got -0.5"),
    ("pgd", {"eps": 0.1, "steps": 0}, r"steps must be an integer >= 1, got 0"),
    ("pgd", {"eps": 0.1, "steps": 2.5}, r"steps must be an integer >= 1, got 2.5"),
    ("apgd", {"eps": 0.1, "steps": 0}, r"steps must be an integer >= 1, got 0"),
    ("trades", {"eps": 0.1, "steps": -3}, r"steps must be an integer >= 1, got -3"),
    ("pgd", {"eps": 0.1, "restarts": 0}, r"restarts must be an integer >= 1, got 0"),
    ("apgd", {"eps": 0.1, "restarts": 0}, r"restarts must be an integer >= 1, got 0"),
    ("pgd", {"eps": 0.1, "restarts": 2, "random_start": False}, r"restarts=2 > 1 needs random_start=True"),
    (
        "fgsm",
        {"eps": 0.1, "clip_min": 1.0, "clip_max": 1.0},
        r"clip_min must be < clip_max .*=1.0, clip_max=1.0",
    ),
    (
        "pgd",
        {"eps": 0.1, "clip_min": 2, "clip_max": 1},
        r"clip_min must be < clip_max .*clip_min=2, clip_max=1",
    ),
    ("pgd", {"eps": 0.1, "norm": "l1"}, r"unknown norm 'l1'; choose one of \['linf', 'l2'\]"),
    ("apgd", {"eps": 0.1, "norm": "l0"}, r"unknown norm 'l0'; choose one of \['linf', 'l2'\]"),
    ("apgd", {"eps": 0.1, "rho": 1.5}, r"rho must be a number in \(0, 1\], got 1.5"),
    ("apgd", {"eps": 0.1, "loss": "mse"}, r"unknown loss 'mse'; choose one of \['ce', 'dlr'\]"),
    ("apgd", {"eps": 0.1, "loss": "dlr", "loss_fn": abs}, r"loss='dlr' and loss_fn are mutually exclusive"),
    (
        "fgsm",
        {"eps": 0.1, "craft_mode": "x"},
        r"unknown craft_mode 'x'; choose one of \['eval', 'train', 'keep'\]",
    ),
    ("fgsm", {"eps": 0.1, "seed": 1.5}, r"seed must be an integer or None, got 1.5"),
    ("fgsm", {"eps": 0.1, "loss_fn": "ce"}, r"loss_fn must be callable"),
]


@pytest.mark.parametrize(("name", "kwargs", "match"), BAD_ARGUMENTS)
def test_bad_arguments_raise_one_line_value_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        create_attack(name, **kwargs)
    assert "\n" not in str(info.value)


def test_valid_edge_values_are_accepted():
    assert create_attack("pgd", eps=0).eps == 0.0
    assert create_attack("apgd", eps=0.1, rho=1.0, norm="L2").norm == "l2"
    assert create_attack("pgd", eps=0.1, craft_mode="KEEP").craft_mode == "keep"
    assert create_attack("fgsm", eps=1, clip_min=-1, clip_max=1).clip_min == -1.0
