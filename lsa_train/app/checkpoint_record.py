"""What a checkpoint says it trained, and the check of a checkpoint given without its run folder.

Every checkpoint of ``lsa-train`` carries a record of what defines the trained network and its budget
(:func:`run_record`: the ``model`` and ``data`` nodes, the attack's ``_target_``/``eps``/``norm``/``base_loss``,
the probes and the measure), kept by :class:`RunRecordCallback`, besides the module's own
``hyper_parameters`` (Lightning's; ``base_loss``, ``num_classes``, ``probes``, ...). A checkpoint handed over
without its run folder (no ``.hydra/``) is checked against the config it is about to be used with
(:func:`check_checkpoint_record`, :func:`check_hyper_parameters`): a difference in what it trained is a
one-line error, one in where its data lives or how it is loaded is a summary line.

Both records are data from a file (read with ``weights_only=True``): they are only compared, never
instantiated or resolved; a record that is not plain data (numbers, strings, lists, string-keyed dicts) or
holds an interpolation (``${...}``) is refused, as :func:`lsa_train.foreign.check_foreign_config` refuses one in
a foreign config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning import Callback
from omegaconf import DictConfig, OmegaConf

from lsa_train.app.errors import ConfigError

#: The attack keys a record keeps: what the network was trained against.
ATTACK_KEYS: tuple[str, ...] = ("_target_", "eps", "eval_eps", "norm", "base_loss")
#: Record keys whose difference is a summary line, not an error: where the data lives and how it is loaded,
#: and the initial weights of the model (the checkpoint's replace them).
NOTE_KEYS: frozenset[str] = frozenset({
    "data.batch_size", "data.eval_batch_size", "data.num_workers", "data.pin_memory", "data.persistent_workers",
    "data.data_dir", "data.download", "data.max_gib", "data.max_files", "data.root", "data.path",
    "model.checkpoint", "model.strict", "model.weights_file", "model.model_dir",
})
#: ``hyper_parameters`` of ``LSARegularizedModule`` that define what it trains (the others are speed switches).
HPARAM_KEYS: tuple[str, ...] = ("base_loss", "num_classes", "probes", "mvl", "trades_beta", "mart_beta", "awp",
                                "concat_clean_adv")
_MISSING = "???"
_ABSENT = object()


class RunRecordCallback(Callback):
    """Stores :func:`run_record` of the run's config in every checkpoint (``checkpoint["callbacks"]``).

    Args:
        record: The run's record (plain data).
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = dict(record)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.record)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps this run's record: a resume has been checked against the one it restores."""


def run_record(cfg: DictConfig) -> dict[str, Any]:
    """The record of what ``cfg`` trains: ``{"model", "data", "attack", "probes", "measure"}``, resolved to
    plain data (``???`` left where the data fills a value in)."""
    attack = cfg.get("attack") or {}
    regularizer = cfg.get("regularizer") or {}
    mvl = (regularizer.get("mvl") or {}) if isinstance(regularizer, DictConfig) else {}
    return {
        "model": _plain(cfg.get("model")),
        "data": _plain(cfg.get("data")),
        "attack": {k: _plain(attack.get(k)) for k in ATTACK_KEYS if isinstance(attack, DictConfig) and k in attack},
        "probes": _plain(mvl.get("probes")) if isinstance(mvl, DictConfig) else None,
        "measure": _plain(regularizer.get("measure")) if isinstance(regularizer, DictConfig) else None,
    }


def _plain(node: Any) -> Any:
    if not OmegaConf.is_config(node):
        return getattr(node, "value", node)  # an enum: its value
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False, enum_to_str=True)
    except Exception:  # an interpolation that only resolves inside a Hydra job: as written
        return OmegaConf.to_container(node, resolve=False, enum_to_str=True)


def saved_record(checkpoint: Mapping[str, Any], source: Path) -> dict[str, Any] | None:
    """The :class:`RunRecordCallback` record in ``checkpoint``, checked to be plain data; ``None`` when it
    has none (written before lsa_train kept it, or by another program).

    Raises:
        ConfigError: A record that is not plain data or holds an interpolation.
    """
    states = checkpoint.get("callbacks")
    record = states.get(RunRecordCallback.__qualname__) if isinstance(states, Mapping) else None
    if record is None:
        return None
    check_plain_data(record, f"the run record of ckpt_path='{source}'")
    return dict(record)


def check_plain_data(value: Any, what: str, key: str = "") -> None:
    """``value`` is numbers, strings, booleans, ``None``, lists and string-keyed dicts, with no ``${``.

    Raises:
        ConfigError: One line naming ``what`` and the key.
    """
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{what} has a key that is not a string ({k!r}); it was not used")
            check_plain_data(v, what, f"{key}.{k}" if key else k)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_plain_data(v, what, f"{key}[{i}]")
    elif isinstance(value, str):
        if "${" in value:
            raise ConfigError(f"{what} holds an interpolation at {key or 'its top'} ({_shown(value)}); a checkpoint "
                              "is data: it was not used")
    elif value is not None and not isinstance(value, bool | int | float):
        raise ConfigError(f"{what} holds a {type(value).__name__} at {key or 'its top'}, not plain data; it was "
                          "not used")


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def _shown(value: Any, limit: int = 80) -> str:
    text = "(unset)" if value is _ABSENT else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare_records(saved: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The differences of two :func:`run_record` s, key by key: ``(errors, notes)``, each ``key=<saved> in
    the checkpoint, <current> here``. Values the data fills in (``???``) are not compared."""
    errors: list[str] = []
    notes: list[str] = []
    left, right = dict(_flatten(saved, "")), dict(_flatten(current, ""))
    for key in sorted(set(left) | set(right)):
        was, now = left.get(key, _ABSENT), right.get(key, _ABSENT)
        if was == now or _MISSING in (was, now):
            continue
        line = f"{key}={_shown(was)} in the checkpoint, {_shown(now)} here"
        (notes if key in NOTE_KEYS else errors).append(line)
    return errors, notes


def check_checkpoint_record(
    checkpoint: Mapping[str, Any], source: Path, cfg: DictConfig, against: str
) -> list[str]:
    """Compares the record of ``checkpoint`` (given without its run folder) with ``cfg``'s; returns summary
    lines (differences in where the data lives or how it loads, or that the checkpoint records nothing).

    Args:
        checkpoint: The loaded checkpoint.
        source: Its path, for messages.
        cfg: The config it is about to be used with.
        against: What ``cfg`` is, for messages (``this command line``, ``run_config='<path>'``).

    Raises:
        ConfigError: The checkpoint trained another model, data, attack budget, probes or measure.
    """
    saved = saved_record(checkpoint, source)
    if saved is None:
        return [f"ckpt_path='{source}' is not in a run folder and records no run (written before lsa_train kept one, "
                f"or by another program): its model, data and attack could not be checked against {against}"]
    errors, notes = compare_records(saved, run_record(cfg))
    if errors:
        raise ConfigError(
            f"ckpt_path='{source}' (no run folder) was trained otherwise than {against} says: {'; '.join(errors[:4])}"
            + (f" and {len(errors) - 4} more" if len(errors) > 4 else "")
            + "; give the checkpoint's values, or use the checkpoint from its run folder"
        )
    return [f"ckpt_path='{source}' (no run folder) differs from {against} in {line}" for line in notes]


def check_hyper_parameters(checkpoint: Mapping[str, Any], source: Path, hparams: Mapping[str, Any]) -> None:
    """The checkpoint's ``hyper_parameters`` (Lightning's, of ``LSARegularizedModule``) agree with those of the
    module built here on :data:`HPARAM_KEYS` (keys absent from either are not compared).

    Raises:
        ConfigError: One line naming each differing key with both values.
    """
    saved = checkpoint.get("hyper_parameters")
    if not isinstance(saved, Mapping):
        return
    saved = {key: saved[key] for key in HPARAM_KEYS if key in saved}  # only what is compared is read
    check_plain_data(saved, f"the hyper_parameters of ckpt_path='{source}'")
    built = dict(hparams)
    differ = [f"{key}={_shown(saved[key])} in the checkpoint, {_shown(built[key])} here" for key in HPARAM_KEYS
              if key in saved and key in built and _comparable(saved[key]) != _comparable(built[key])]
    if differ:
        raise ConfigError(f"ckpt_path='{source}' (no run folder) was trained with other module settings: "
                          f"{'; '.join(differ)}; give the checkpoint's values, or use it from its run folder")


def _comparable(value: Any) -> Any:
    """Tuples as lists (a checkpoint stores lists), for comparison."""
    if isinstance(value, tuple | list):
        return [_comparable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _comparable(v) for k, v in value.items()}
    return value
