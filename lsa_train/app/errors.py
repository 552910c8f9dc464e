"""Configuration errors and their one-line rendering for the command line."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager

#: Lines of Hydra/OmegaConf messages that carry no information for the user.
_NOISE = re.compile(r"^(full_key:|object_type=|reference_type=|Set the environment variable HYDRA_FULL_ERROR)")


class ConfigError(ValueError):
    """A bad configuration value, found before any training; the message is one line naming the
    value and the valid choices."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@contextmanager
def config_section(where: str) -> Iterator[None]:
    """Turns a ``ValueError``/``TypeError`` raised while building ``where`` into a :class:`ConfigError`.

    Args:
        where: The config node or override being built, e.g. ``"attack=pgd"``; prefixed to the message.
    """
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {one_line(err)}") from err


def one_line(err: BaseException) -> str:
    """Renders an exception (Hydra, OmegaConf or ours) as one line.

    Hydra's "Available options" lists are joined with commas, "Config search path" listings are
    dropped, OmegaConf's ``full_key``/``object_type`` trailers are removed, and an OmegaConf cause
    of a Hydra error is appended (for a key missing from a structured schema, with the valid keys).
    """
    text = _collapse(str(err))
    cause = err.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf"):
        extra = _collapse(str(cause))
        valid = _valid_keys(cause) if "not in" in extra else []
        if valid:
            extra = f"{extra}; valid keys: {', '.join(valid)}"
        if extra and extra not in text:
            text = f"{text} ({extra})"
    return text or type(err).__name__


def _collapse(message: str) -> str:
    parts: list[str] = []
    options: list[str] = []
    for raw in message.splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            break
        if not line or _NOISE.match(line):
            continue
        if raw.startswith("\t"):  # one entry of Hydra's "Available options in 'group':" list
            options.append(line)
            continue
        if options:
            parts[-1] += " " + ", ".join(options)
            options = []
        parts.append(line)
    if options and parts:
        parts[-1] += " " + ", ".join(options)
    text = "; ".join(p.rstrip(".;") if i < len(parts) - 1 else p for i, p in enumerate(parts))
    return text.replace(":;", ":")


def _valid_keys(cause: BaseException) -> list[str]:
    """The fields of the structured schema a ``Key 'x' not in 'Schema'`` error refers to."""
    object_type = getattr(cause, "object_type", None)
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return []
    return [f.name for f in dataclasses.fields(object_type) if not f.name.startswith("_")]
