"""Name -> class registry of the attacks, filled by the :func:`register_attack` decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lsa_train.attacks.base import Attack

AttackT = TypeVar("AttackT", bound=type[Attack])

#: Registered attack classes by key (e.g. ``"pgd"``), in registration order.
ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[AttackT], AttackT]:
    """Class decorator that registers an :class:`Attack` subclass under ``name`` and sets its ``name``.

    Args:
        name: The registry key, lower case (e.g. ``"pgd"``).

    Raises:
        ValueError: If ``name`` is already taken by another class.
    """
    key = name.lower()

    def decorator(cls: AttackT) -> AttackT:
        if key in ATTACKS and ATTACKS[key] is not cls:
            raise ValueError(f"attack name {key!r} is already registered to {ATTACKS[key].__name__}")
        cls.name = key
        ATTACKS[key] = cls
        return cls

    return decorator


def list_attacks() -> list[str]:
    """The registered attack keys, sorted."""
    return sorted(ATTACKS)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Builds the attack registered as ``name`` (case-insensitive), forwarding ``kwargs`` to its class.

    Example:
        >>> atk = create_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=10)

    Raises:
        ValueError: If no attack is registered as ``name`` (the message lists the choices), or
            if the class rejects an argument.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {list_attacks()}")
    return ATTACKS[key](**kwargs)
