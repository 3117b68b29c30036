"""Value checks of every config schema: each key's range and choices (declared beside its field with
:func:`setting`), finiteness, and names.

:func:`validate` runs when a config is loaded (``pipeline.config.schema``, ``pipeline.scenarios.few_shot.config``),
before anything runs, so a bad value is one line naming the key and what it must be.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.objectives import OBJECTIVES, check_param, objective_params
from pipeline.engine.trackers import TRACKERS


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line."""


@dataclass(frozen=True)
class Check:
    """A numeric rule for one key: the value (each element, for a list) lies in ``[lo, hi]``.

    ``lo_open``/``hi_open`` exclude that end. ``pair``: a list of exactly two values, low <= high. ``nonempty``: a list
    with at least one element. ``unless=(key, value)``: skip the rule while that sibling equals value.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    pair: bool = False
    nonempty: bool = False
    unless: tuple[str, Any] | None = None


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            check: Check | None = None, choices: tuple[Any, ...] | None = None) -> Any:
    """A config field with its rule beside it: ``x: float = setting(0.5, check=Check(0, 1))``.

    ``check`` is the key's range (see :class:`Check`), ``choices`` its allowed values; both are checked
    when a config is loaded, naming the key.
    """
    meta = {k: v for k, v in (("check", check), ("choices", choices)) if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(lo: float) -> Check:
    return Check(lo=lo)


def above(lo: float) -> Check:
    return Check(lo=lo, lo_open=True)


def within(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    return Check(lo, hi, lo_open, hi_open)



def _check_range(rule: Check, value: float, key: str) -> None:
    bad_lo = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    bad_hi = rule.hi is not None and (value >= rule.hi if rule.hi_open else value > rule.hi)
    if not (bad_lo or bad_hi):
        return
    if rule.lo is not None and rule.hi is not None:
        want = f"in {'(' if rule.lo_open else '['}{rule.lo:g}, {rule.hi:g}{')' if rule.hi_open else ']'}"
    elif rule.lo is not None:
        want = f"{'>' if rule.lo_open else '>='} {rule.lo:g}"
    else:
        assert rule.hi is not None
        want = f"{'<' if rule.hi_open else '<='} {rule.hi:g}"
    raise ConfigError(f"{key} must be {want}, got {value:g}")


def _check_finite(value: Any, key: str) -> None:
    """Every float in ``value`` (nested lists and mappings too) is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}")


def _check_rule(rule: Check, value: Any, key: str, section: Any) -> None:
    if rule.unless is not None and getattr(section, rule.unless[0]) == rule.unless[1]:
        return
    if isinstance(value, list):
        if rule.nonempty and not value:
            raise ConfigError(f"{key} must not be empty")
        if rule.pair and (len(value) != 2 or value[0] > value[1]):
            raise ConfigError(f"{key} must be two numbers [low, high] with low <= high, got {value}")
        for i, v in enumerate(value):
            _check_range(rule, v, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_range(rule, value, key)


def _check_output_outside_store(cfg: Any) -> None:
    """A run directory written into the store it reads would mix run files with the store's."""
    store = getattr(getattr(cfg, "teacher", None), "store", None)
    out = getattr(getattr(cfg, "run", None), "output", None)
    if not store or not out or "://" in str(store):
        return
    s, o = Path(store).resolve(), Path(out).resolve()
    if o == s or s in o.parents:
        raise ConfigError(f"run.output {out} is {'the store' if o == s else 'inside the store'} teacher.store {store}; "
                          "choose a run.output outside it")


def validate(cfg: Any, prefix: str = "") -> Any:
    """Check every value of the dataclass ``cfg`` against its field's declared range and choices, the objective section against the
    objectives' own declared ranges (``pipeline.objectives.param``), and finiteness; ConfigError naming the key."""
    if not prefix:
        _check_output_outside_store(cfg)
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if f.metadata.get("sections"):  # the scenarios' sections (pipeline/scenario.py)
            for name, section in value.items():
                validate(section, f"{prefix}{name}.")
            continue
        if dataclasses.is_dataclass(value):
            validate(value, f"{key}.")
            continue
        if value is None:
            continue
        _check_finite(value, key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
        rule = f.metadata.get("check")
        if rule is not None:
            _check_rule(rule, value, key, cfg)
        if key == "run.log" and any(name not in TRACKERS for name in value):
            raise ConfigError(f"run.log may list {', '.join(TRACKERS)}, got {value}")
        if key == "objective.name" and value not in OBJECTIVES:
            raise ConfigError(f"objective.name must be one of {', '.join(OBJECTIVES)}, got {value!r}")
        if prefix == "objective." and f.name in objective_params():
            problem = check_param(objective_params()[f.name], value)
            if problem:
                raise ConfigError(f"{key} {problem}")
    return cfg
