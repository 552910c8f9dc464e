"""Pairing runs that differ only in the compared key(s) and share a seed.

Two runs form a pair when their settings are equal except for the ``by`` keys (a key also covers
everything below it: ``regularizer`` covers the group choice and ``regularizer.lambda``,
``regularizer.mvl.mode``, ...), the ``ignore`` keys, and they have the same seed. Runs with equal
remaining settings share a *context*; within a context one ``by`` value is the baseline and each other
value a treatment, and every (context, baseline value, treatment value) with at least one common seed is
one :class:`Comparison`. A run that ends up in no pair is reported with the reason, never dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lsa_train.comparison.errors import CompareError
from lsa_train.comparison.records import Run, Value

#: Values that mean "off", which sort first (so that they are the default baseline).
_OFF_TEXT = {"none", "off", "null", "false"}

Context = tuple[tuple[str, Value], ...]
ByValue = tuple[Value, ...]


@dataclass(frozen=True)
class Pair:
    """A baseline run and a treatment run of the same seed."""

    seed: Value
    baseline: Run
    treatment: Run


@dataclass
class Comparison:
    """All pairs of one context between one baseline value and one treatment value of the ``by`` keys."""

    context: Context
    baseline: ByValue
    treatment: ByValue
    pairs: list[Pair]


@dataclass
class Pairing:
    """The result of :func:`pair_runs`.

    Attributes:
        by: The compared keys.
        seed_key: The seed setting.
        comparisons: One per (context, baseline, treatment), ordered by context, baseline, treatment.
        unpaired: ``(run, reason)`` for every run in no pair.
        context_keys: The settings (other than ``by``, ``ignore`` and the seed) that differ between contexts.
    """

    by: tuple[str, ...]
    seed_key: str
    comparisons: list[Comparison] = field(default_factory=list)
    unpaired: list[tuple[Run, str]] = field(default_factory=list)
    context_keys: list[str] = field(default_factory=list)


def show(value: Value) -> str:
    """A setting value as text: ``null``, ``true``/``false``, numbers in ``%g``, strings as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def matches(value: Value, text: str) -> bool:
    """Whether ``value`` is what ``text`` says (``1`` is ``1.0``; ``null``/``none`` is ``None``)."""
    text = text.strip().strip("'\"")
    if value is None:
        return text.lower() in ("null", "none", "~")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return str(value) == text


def value_order(value: Value) -> tuple[int, float, str]:
    """Sort key of a value: "off" values (null, false, 0, none, off) first, then numbers, then text."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in _OFF_TEXT):
        return (0, 0.0, show(value))
    if isinstance(value, int | float):
        return (0, 0.0, "") if value == 0 else (1, float(value), "")
    return (2, 0.0, str(value))


def covered(key: str, prefixes: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``prefixes`` or below one (``a.b`` is below ``a``; a group choice
    ``schema/x@a.b`` is below ``a`` through its package)."""
    names = [key, key.rpartition("@")[2]] if "@" in key else [key]
    return any(name == p or name.startswith(f"{p}.") for name in names for p in prefixes)


def parse_assignments(items: Sequence[str], option: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a bad item is a :class:`CompareError` naming ``option``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompareError(f"{option} {item}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def by_value(run: Run, key: str) -> Value:
    """The value of ``key`` for ``run``: the setting (or group choice) itself, else the settings below it."""
    if key in run.settings:
        return run.settings[key]
    below = {k: v for k, v in run.settings.items() if covered(k, [key])}
    return json.dumps(below, sort_keys=True) if below else None


def known_keys(runs: Sequence[Run]) -> set[str]:
    return {k for run in runs for k in run.settings}


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """The settings whose values differ between ``runs`` (or that some runs lack), sorted."""
    keys = known_keys(runs)
    return sorted(k for k in keys if len({json.dumps(r.settings.get(k, "<missing>")) for r in runs}) > 1)


def check_key(runs: Sequence[Run], key: str, option: str) -> None:
    """A :class:`CompareError` naming the keys that vary when no run has ``key`` (or anything below it)."""
    if any(covered(k, [key]) for k in known_keys(runs)):
        return
    varying = varying_keys(runs)
    hint = f"keys that differ between the runs: {', '.join(varying)}" if varying else "the runs do not differ at all"
    raise CompareError(f"{option} {key}: no run has this key; {hint}")


def pair_runs(runs: Sequence[Run], by: Sequence[str], *, seed_key: str = "seed", ignore: Sequence[str] = (),
              baseline: Mapping[str, str] | None = None) -> Pairing:
    """Pairs ``runs`` that differ only in ``by`` (and ``ignore``) and have the same seed.

    Args:
        runs: The runs.
        by: The keys whose values differ within a pair.
        seed_key: The seed setting; a pair always has one seed.
        ignore: Keys that may differ within a pair without being compared (e.g. ``tags``).
        baseline: ``{by key: value}`` that picks the baseline value(s) in every context. Default: the
            smallest value of the context (null, false, 0, none, off first; then numbers; then text).

    Raises:
        CompareError: An unknown key, a ``by`` key that is the seed, two runs with the same settings and seed,
            or no pair at all (naming the keys that differ between the runs).
    """
    by = tuple(by)
    if not by:
        raise CompareError("--by: name at least one key")
    if not runs:
        raise CompareError("no runs to compare")
    for key in by:
        if key == seed_key or covered(seed_key, [key]):
            raise CompareError(f"--by {key}: that is the seed key; pairs always share the seed")
        check_key(runs, key, "--by")
    for key in ignore:
        check_key(runs, key, "--ignore")
    baseline = dict(baseline or {})
    for key, text in baseline.items():
        if key not in by:
            raise CompareError(f"--baseline {key}: not one of the --by keys ({', '.join(by)})")
        values = {show(by_value(run, key)) for run in runs}
        if not any(matches(by_value(run, key), text) for run in runs):
            raise CompareError(f"--baseline {key}={text}: no run has this value; {key} is "
                               f"{', '.join(sorted(values))}")
    excluded = (*by, *ignore, seed_key)

    def context_of(run: Run) -> Context:
        return tuple(sorted((k, v) for k, v in run.settings.items() if not covered(k, excluded)))

    contexts: dict[Context, list[Run]] = defaultdict(list)
    for run in runs:
        contexts[context_of(run)].append(run)
    result = Pairing(by=by, seed_key=seed_key)
    used: set[int] = set()
    for context in sorted(contexts, key=_context_order):
        members = contexts[context]
        cells: dict[tuple[ByValue, str], Run] = {}
        for run in members:
            cell = (tuple(by_value(run, k) for k in by), json.dumps(run.seed))
            if cell in cells:
                raise CompareError(f"{cells[cell].label} and {run.label} have the same settings and seed "
                                   f"{show(run.seed)}; pass only one of them (or --ignore the key that tells them "
                                   "apart)")
            cells[cell] = run
        values = sorted({v for v, _ in cells}, key=lambda v: [value_order(x) for x in v])
        if baseline:
            bases = [v for v in values if all(matches(v[by.index(k)], text) for k, text in baseline.items())]
        else:
            bases = values[:1] if len(values) > 1 else []
        for base in bases:
            for treatment in (v for v in values if v not in bases):
                pairs = [Pair(cells[(base, s)].seed, cells[(base, s)], cells[(treatment, s)])
                         for v, s in cells if v == treatment and (base, s) in cells]
                if not pairs:
                    continue
                pairs.sort(key=lambda p: value_order(p.seed))
                result.comparisons.append(Comparison(context, base, treatment, pairs))
                used.update(id(r) for p in pairs for r in (p.baseline, p.treatment))
    contexts_by_run = {id(run): context for context, members in contexts.items() for run in members}
    for run in runs:
        if id(run) not in used:
            result.unpaired.append((run, _why_unpaired(run, runs, contexts, contexts_by_run, by, baseline, excluded)))
    if not result.comparisons:
        varying = [k for k in varying_keys(runs) if k != seed_key]
        raise CompareError(f"no pairs: no two runs of the same seed differ only in {', '.join(by)}; keys that differ "
                           f"between the runs: {', '.join(varying) or 'none'}")
    settings = [dict(context) for context in contexts]
    keys = {k for context in settings for k in context}
    result.context_keys = sorted(k for k in keys if len({json.dumps(c.get(k, "<missing>")) for c in settings}) > 1)
    return result


def _context_order(context: Context) -> list[tuple[str, tuple[int, float, str]]]:
    return [(k, value_order(v)) for k, v in context]


def _why_unpaired(run: Run, runs: Sequence[Run], contexts: Mapping[Context, list[Run]],
                  contexts_by_run: Mapping[int, Context], by: tuple[str, ...], baseline: Mapping[str, str],
                  excluded: tuple[str, ...]) -> str:
    members = contexts[contexts_by_run[id(run)]]
    mine = tuple(by_value(run, k) for k in by)
    others = [r for r in members if tuple(by_value(r, k) for k in by) != mine]
    if others:
        if baseline and not any(all(matches(by_value(r, k), t) for k, t in baseline.items()) for r in members):
            spec = ", ".join(f"{k}={t}" for k, t in baseline.items())
            return f"no baseline run ({spec}) with otherwise the same settings"
        seeds = sorted({show(r.seed) for r in others})
        return f"no partner of seed {show(run.seed)} (the runs it could pair with have seeds {', '.join(seeds)})"
    best: tuple[int, list[str]] | None = None
    for other in runs:
        if other is run or json.dumps(other.seed) != json.dumps(run.seed):
            continue
        if tuple(by_value(other, k) for k in by) == mine:
            continue
        keys = sorted(k for k in set(run.settings) | set(other.settings) if not covered(k, excluded)
                      and run.settings.get(k, "<missing>") != other.settings.get(k, "<missing>"))
        if best is None or len(keys) < best[0]:
            best = (len(keys), keys)
    what = ", ".join(by)
    if best is None:
        return f"no run of seed {show(run.seed)} with another value of {what}"
    shown = ", ".join(best[1][:4]) + (", ..." if len(best[1]) > 4 else "")
    return f"no run that differs only in {what}; the nearest of seed {show(run.seed)} also differs in {shown}"
