"""``w2s tune``'s search space: the ``--space key=spec`` grammar, and its check against the config.

Each ``--space key=spec`` is one searched config key: ``float`` or ``int`` between two bounds (on a log
scale with ``:log``), or ``categorical`` choices. A trial's values are overrides of the given config
(``key=value``); before any trial starts, each key is loaded with its bounds or every choice, so a key
the config lacks or a value it refuses is named at once. The keys in ``FIXED_KEYS`` cannot be searched.
The canonical spec text (``Param.spec``) is what ``tune.json`` records, and reads back the same.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from pipeline.config.schema import ConfigError, load_config
from pipeline.config.yaml_files import load_yaml

SPACE_FORM = "key=float:LOW:HIGH[:log], key=int:LOW:HIGH[:log] or key=categorical:v1,v2,..."
FIXED_KEYS = {"run.output": "tune sets each trial's run.output",
              "data.val_fraction": "the validation split scores the trials, so it must be the same for all"}


@dataclass(frozen=True)
class Param:
    """One searched key: ``float``/``int`` between ``low`` and ``high`` (``log`` scale), or ``categorical``."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        """The canonical spec text (how ``tune.json`` records it)."""
        if self.kind == "categorical":
            return "categorical:" + ",".join(json.dumps(c) for c in self.choices)
        return f"{self.kind}:{self.low!r}:{self.high!r}" + (":log" if self.log else "")

    def samples(self) -> list[Any]:
        """Values that check the key against the config: the bounds, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))


def parse_param(item: str) -> Param:
    """``"optim.lr=float:1e-3:1e-1:log"`` -> a :class:`Param`; a bad item is a one-line ConfigError naming it."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"--space {item!r}: {why}; expected {SPACE_FORM}")

    key, sep, spec = item.partition("=")
    key = key.strip()
    if not sep or not key or not spec.strip():
        raise bad("not of the form key=spec")
    if key in FIXED_KEYS:
        raise bad(f"{key} cannot be searched ({FIXED_KEYS[key]})")
    kind, _, rest = spec.strip().partition(":")
    if kind == "categorical":
        try:
            values = [load_yaml(v) for v in rest.split(",") if v.strip()]
        except yaml.YAMLError:
            raise bad(f"{rest!r} holds a value that is not YAML") from None
        values = [v for i, v in enumerate(values) if v not in values[:i]]
        if not values:
            raise bad("no values")
        odd = [v for v in values if v is not None and not isinstance(v, (str, int, float, bool))]
        if odd:
            raise bad(f"{odd[0]!r} is not a scalar")
        return Param(key, kind, choices=tuple(values))
    if kind not in ("float", "int"):
        raise bad(f"unknown kind {kind!r}")
    parts = rest.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise bad(f"{kind} takes LOW:HIGH or LOW:HIGH:log")
    try:
        low, high = (float(p) if kind == "float" else int(p) for p in parts[:2])
    except ValueError:
        raise bad(f"LOW and HIGH must be {'numbers' if kind == 'float' else 'integers'}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise bad("LOW must be below HIGH (both finite)")
    if len(parts) == 3 and low <= 0:
        raise bad("a log range needs LOW > 0")
    return Param(key, kind, low, high, len(parts) == 3)


def parse_space(items: list[str]) -> list[Param]:
    """Every ``--space`` item, each key once."""
    if not items:
        raise ConfigError(f"tune needs at least one --space {SPACE_FORM}")
    space = [parse_param(i) for i in items]
    keys = [p.key for p in space]
    twice = [k for i, k in enumerate(keys) if k in keys[:i]]
    if twice:
        raise ConfigError(f"--space {twice[0]} is given twice; keep one")
    return space


def override(key: str, value: Any) -> str:
    """``key=value`` for ``--set``/``load_config`` (JSON text is YAML, so strings stay strings)."""
    return f"{key}={json.dumps(value)}"


def check_space(config: str | Path, base_overrides: list[str], space: list[Param]) -> None:
    """Load the config with each key's bounds or choices, so a key the config lacks or a value it refuses is
    named before any trial starts."""
    for p in space:
        for value in p.samples():
            try:
                load_config(config, base_overrides + [override(p.key, value)])
            except ConfigError as exc:
                raise ConfigError(f"--space {p.key}={p.spec}: {str(exc).splitlines()[0]}") from None
