"""Loading what is compared: run folders of the app, multirun folders, and JSON records.

Every input becomes a :class:`Run`: a label, the seed, the flat settings the pairing compares and the
metrics (accuracies as fractions in ``[0, 1]``).

* **A run folder** (``python -m lsa_train`` writes one): ``.hydra/config.yaml`` (the composed config,
  flattened to dotted keys such as ``regularizer.lambda``), the group choices of ``.hydra/hydra.yaml``
  (``hydra.runtime.choices``, e.g. ``regularizer: none``; from ``.hydra/overrides.yaml`` when that file
  is missing) and the metrics of ``metrics.json`` (``acc_clean``, ``acc_pgd``) or of the newest
  evaluation in ``eval/<date>_<time>/metrics.json`` (``lsa-evaluate``: ``clean_accuracy``,
  ``pgd_accuracy``, ``autoattack_accuracy``, ``worst_case_accuracy``). An evaluation folder given
  directly counts as its training run with that evaluation's metrics.
* **A multirun folder**, or any folder holding run folders: every run folder below it (not below a run).
* **Records**: a ``.json`` file (one object or a list), a ``.jsonl`` file, or a folder of ``.json`` files,
  one object per run, as ``experiments/paper`` writes them: ``seed``, ``config`` (the settings; nested
  mappings become dotted keys), optionally ``model`` and ``dataset`` (settings too), and the metrics at
  the top level or under ``metrics``: ``clean``, ``pgd`` (a number, or ``{eps: accuracy}``),
  ``autoattack`` (a number, or a mapping with ``robust_accuracy``), ``worst_case_accuracy``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsa_train.comparison.errors import CompareError

#: A setting value: a JSON scalar (lists are kept as their JSON text, so that every value is hashable).
Value = str | int | float | bool | None


@dataclass(frozen=True)
class Metric:
    """A compared metric: its label and the names it has in the files (first found wins)."""

    name: str
    label: str
    keys: tuple[str, ...]


#: The metrics ``lsa-compare`` knows, by name. All are accuracies, stored as fractions in ``[0, 1]``.
METRICS: dict[str, Metric] = {
    m.name: m for m in (
        Metric("clean", "clean accuracy", ("clean", "clean_accuracy", "acc_clean")),
        Metric("pgd", "PGD accuracy", ("pgd", "pgd_accuracy", "acc_pgd")),
        Metric("autoattack", "AutoAttack accuracy", ("autoattack", "autoattack_accuracy")),
        Metric("worst_case", "worst-case accuracy", ("worst_case_accuracy",)),
    )
}
#: Metrics compared unless ``--metrics`` says otherwise.
DEFAULT_METRICS = ("clean", "pgd", "worst_case")
#: Group choices of ``hydra.runtime.choices`` that are Hydra's own (launcher, sweeper, logging): not settings.
_HYDRA_GROUP_PREFIX = "hydra/"


@dataclass(frozen=True)
class Run:
    """One trained network, as the pairing and the statistics see it.

    Attributes:
        label: Where it came from (a folder, or ``file`` / ``file#index`` / a record's ``key``).
        seed: The value of the seed key (``None`` when the run has none).
        settings: Flat ``{dotted key: value}`` of everything that describes the run (seed included).
        metrics: ``{metric name: accuracy}``, fractions in ``[0, 1]``, for the metrics it has.
        source: The file the metrics were read from.
    """

    label: str
    seed: Value
    settings: Mapping[str, Value]
    metrics: Mapping[str, float]
    source: str = ""


@dataclass
class LoadedRuns:
    """What :func:`load_runs` found: the runs, and the inputs left out with the reason."""

    runs: list[Run] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Value]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON text)."""
    flat: dict[str, Value] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(list(value), sort_keys=True, default=str)
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def load_runs(paths: Sequence[str | Path], *, metrics: Sequence[str], source: str = "auto",
              seed_key: str = "seed", pgd_eps: float | None = None) -> LoadedRuns:
    """Loads every run of ``paths`` (run folders, multirun folders, evaluation folders, record files/folders).

    Args:
        paths: The inputs, in order; see the module docstring.
        metrics: Names from :data:`METRICS` to read.
        source: For run folders: ``"train"`` (``metrics.json``), ``"eval"`` (the newest evaluation under
            ``eval/``) or ``"auto"`` (the evaluations when every run folder has one, else ``metrics.json``).
        seed_key: The setting that holds the seed.
        pgd_eps: Which entry of a ``pgd`` metric stored as ``{eps: accuracy}`` to use.

    Raises:
        CompareError: A missing path, a folder with neither runs nor records, an unreadable file, a metric
            that is not a fraction, or a record without a seed.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CompareError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if source not in ("auto", "train", "eval"):
        raise CompareError(f"--source {source}: choose auto, train or eval")
    loaded = LoadedRuns()
    folders: list[tuple[Path, Path | None]] = []  # (run folder, evaluation folder given directly)
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CompareError(f"{path}: no such file or folder")
        if path.is_file():
            _add_records(loaded, _read_record_file(path), seed_key, metrics, pgd_eps)
            continue
        evaluation = _evaluation_of(path)
        if evaluation is not None:
            folders.append(evaluation)
            continue
        runs = list(_run_folders(path))
        if runs:
            folders += [(run, None) for run in runs]
            continue
        files = sorted(path.glob("*.json"))
        if not files:
            raise CompareError(f"{path}: no run folder (with .hydra/config.yaml) and no .json records in it")
        for file in files:
            _add_records(loaded, _read_record_file(file), seed_key, metrics, pgd_eps)
    if folders:
        _add_run_folders(loaded, folders, source, seed_key, metrics, pgd_eps)
    return loaded


# -- run folders -------------------------------------------------------------------------------------------
def _is_run(folder: Path) -> bool:
    return (folder / ".hydra" / "config.yaml").is_file()


def _evaluation_of(folder: Path) -> tuple[Path, Path] | None:
    """``(training run, folder)`` when ``folder`` is an evaluation (``<run>/eval/<stamp>/``) with metrics."""
    if folder.parent.name == "eval" and _is_run(folder.parent.parent) and (folder / "metrics.json").is_file():
        return folder.parent.parent, folder
    return None


def _run_folders(folder: Path) -> Iterable[Path]:
    """``folder`` itself if it is a run, else every run folder below it (a run's own subfolders are not searched)."""
    if _is_run(folder):
        yield folder
        return
    for child in sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: (_number(p.name), p.name)):
        yield from _run_folders(child)


def _number(name: str) -> int:
    return int(name) if name.isdigit() else 1 << 30


def _newest_evaluation(run: Path) -> Path | None:
    evaluations = sorted(p for p in (run / "eval").glob("*/metrics.json")) if (run / "eval").is_dir() else []
    return evaluations[-1].parent if evaluations else None


def _add_run_folders(loaded: LoadedRuns, folders: list[tuple[Path, Path | None]], source: str, seed_key: str,
                     metrics: Sequence[str], pgd_eps: float | None) -> None:
    evaluations = {run: given or _newest_evaluation(run) for run, given in folders}
    with_eval = sum(e is not None for e in evaluations.values())
    use_eval = source == "eval" or (source == "auto" and with_eval == len(folders))
    if source == "auto" and 0 < with_eval < len(folders):
        loaded.notes.append(f"metrics from each run's metrics.json: only {with_eval} of {len(folders)} run folders "
                            "have an evaluation (eval/*/metrics.json); --source eval uses those")
    for run, _given in folders:
        evaluation = evaluations[run] if use_eval else None
        if use_eval and evaluation is None:
            loaded.left_out.append((str(run), "no evaluation (eval/*/metrics.json) with --source eval"))
            continue
        metrics_file = (evaluation or run) / "metrics.json"
        summary = _read_json(metrics_file) if metrics_file.is_file() else None
        if summary is None:
            loaded.left_out.append((str(run), "no metrics.json (the run failed or is still running)"))
            continue
        if summary.get("status", "completed") != "completed":
            loaded.left_out.append((str(run), f"status {summary.get('status')}: {summary.get('error', '')}".strip()))
            continue
        settings = _run_settings(run)
        if seed_key not in settings:
            raise CompareError(f"{run}: its config has no {seed_key!r} (--seed-key names the seed setting)")
        values = _metrics_of(summary, metrics, str(metrics_file), pgd_eps)
        loaded.runs.append(Run(str(evaluation or run), settings[seed_key], settings, values, str(metrics_file)))


def _run_settings(run: Path) -> dict[str, Value]:
    """The flat config of ``run`` plus its group choices (``regularizer: none``)."""
    config = _read_yaml(run / ".hydra" / "config.yaml")
    if not isinstance(config, Mapping):
        raise CompareError(f"{run / '.hydra' / 'config.yaml'}: not a mapping")
    settings = flatten(config)
    for group, choice in _group_choices(run).items():
        if group not in settings and not group.startswith(_HYDRA_GROUP_PREFIX) and group != "hydra":
            settings[group] = choice
    return settings


def _group_choices(run: Path) -> dict[str, Value]:
    """``hydra.runtime.choices`` of ``.hydra/hydra.yaml``; without that file, the ``group=option`` overrides."""
    hydra_file = run / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        node: Any = _read_yaml(hydra_file)
        for key in ("hydra", "runtime", "choices"):
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            return {str(k): (None if v is None else str(v)) for k, v in node.items()}
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = _read_yaml(overrides_file) if overrides_file.is_file() else []
    choices = {}
    for item in overrides or []:
        key, sep, value = str(item).lstrip("+~").partition("=")
        if sep and "." not in key and not value.startswith(("[", "{")):
            choices[key] = value
    return choices


# -- records -------------------------------------------------------------------------------------------
def _read_record_file(path: Path) -> list[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError as err:
            raise CompareError(f"{path}: not JSON Lines ({err})") from err
        return [(f"{path}#{i}", item) for i, item in enumerate(items)]
    data = _read_json(path)
    if isinstance(data, list):
        return [(f"{path}#{i}", item) for i, item in enumerate(data)]
    return [(str(path), data)]


def _add_records(loaded: LoadedRuns, items: list[tuple[str, Any]], seed_key: str, metrics: Sequence[str],
                 pgd_eps: float | None) -> None:
    for label, record in items:
        if not isinstance(record, Mapping):
            raise CompareError(f"{label}: a record must be a JSON object")
        config = record.get("config")
        if not isinstance(config, Mapping):
            raise CompareError(f"{label}: no 'config' mapping (the settings the pairing compares)")
        settings = flatten(config)
        for key in ("dataset", "model"):
            if isinstance(record.get(key), str) and key not in settings:
                settings[key] = record[key]
        seed = record.get(seed_key, settings.get(seed_key))
        if seed is None:
            raise CompareError(f"{label}: no {seed_key!r} (--seed-key names the seed field)")
        settings[seed_key] = seed
        loaded.runs.append(Run(label, seed, settings, _metrics_of(record, metrics, label, pgd_eps), label))


# -- metrics -------------------------------------------------------------------------------------------
def _metrics_of(summary: Mapping[str, Any], names: Sequence[str], where: str,
                pgd_eps: float | None) -> dict[str, float]:
    nested = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}
    values: dict[str, float] = {}
    for name in names:
        for key in METRICS[name].keys:
            raw = summary.get(key, nested.get(key))
            if raw is None:
                continue
            value = _metric_value(raw, name, where, pgd_eps)
            if value is not None:
                values[name] = value
                break
    return values


def _metric_value(raw: Any, name: str, where: str, pgd_eps: float | None) -> float | None:
    if isinstance(raw, Mapping):
        for key in ("robust_accuracy", "accuracy"):
            if key in raw:
                return _metric_value(raw[key], name, where, pgd_eps)
        try:
            by_eps = {float(k): v for k, v in raw.items()}
        except ValueError:
            return None
        if pgd_eps is not None:
            match = [v for e, v in by_eps.items() if math.isclose(e, pgd_eps)]
            if not match:
                raise CompareError(f"{where}: {name} has no entry at eps {pgd_eps:g} (it has "
                                   f"{', '.join(f'{e:g}' for e in sorted(by_eps))})")
            return _metric_value(match[0], name, where, pgd_eps)
        if len(by_eps) != 1:
            raise CompareError(f"{where}: {name} has several eps ({', '.join(f'{e:g}' for e in sorted(by_eps))}); "
                               "choose one with --pgd-eps")
        return _metric_value(next(iter(by_eps.values())), name, where, pgd_eps)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    if not (0.0 <= value <= 1.0):
        raise CompareError(f"{where}: {name} = {value:g} is not an accuracy in [0, 1] (a fraction, not percent)")
    return value


# -- files ------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: unreadable JSON ({err})") from err


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CompareError(f"{path}: unreadable YAML ({' '.join(str(err).split())})") from err
