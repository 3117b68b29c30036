"""Where a ``w2s tune`` study lives and what it was started with: its storage and its settings file.

The study lives in an Optuna storage: by default the journal file ``DIR/study.journal``
(``JournalStorage`` over ``JournalFileBackend``, safe for processes on one machine or a shared file
system), or any storage URL (``postgresql://...``), recorded without its password (worker processes
get the full URL in their environment, ``W2S_TUNE_STORAGE``). The study's settings are written to
``DIR/tune.json``; a rerun with another space, config or storage is refused, naming the difference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from pipeline.config.schema import ConfigError
from pipeline.engine.run_dir import first_difference
from pipeline.engine.runtime import RunError
from pipeline.experiments.tune_space import Param, parse_param

SETTINGS_FILE = "tune.json"
JOURNAL_FILE = "study.journal"
STORAGE_ENV = "W2S_TUNE_STORAGE"  # the full --storage URL for worker processes (tune.json keeps no password)


@dataclass(frozen=True)
class Settings:
    """What ``tune.json`` records: the study's definition (compared on a rerun) and its run options."""

    config: str
    overrides: tuple[str, ...]
    space: tuple[Param, ...]
    resolved: dict[str, Any]
    study: str
    storage: str | None  # without its password; None: the journal file DIR/study.journal
    trials: int
    pruner: str

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "set": list(self.overrides), "space": [f"{p.key}={p.spec}" for p in self.space],
                "resolved": self.resolved, "study": self.study, "storage": self.storage, "trials": self.trials,
                "pruner": self.pruner}

    @classmethod
    def read(cls, out: Path) -> "Settings":
        path = out / SETTINGS_FILE
        try:
            data = json.loads(path.read_text())
            return cls(data["config"], tuple(data["set"]),
                       tuple(parse_param(item) for item in data["space"]), data["resolved"],
                       data["study"], data["storage"], int(data["trials"]), data["pruner"])
        except FileNotFoundError:
            raise RunError(f"{out} is not a tune directory (no {SETTINGS_FILE}); start it with w2s tune") from None
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise RunError(f"{path}: not a tune settings file ({type(exc).__name__}: {exc}); "
                           "rerun w2s tune with --output in a new directory") from None


def _without(resolved: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``resolved`` without the dotted ``keys`` (the searched keys: the base config's values do not matter)."""
    out = json.loads(json.dumps(resolved))
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _space_text(key: str, spec: str | None) -> str:
    return f"--space {key}={spec}" if spec else f"no --space {key}"


def check_same_settings(out: Path, new: Settings) -> None:
    """Refuse to continue a study of ``out`` with another space, config, study name or storage."""
    if not (out / SETTINGS_FILE).exists():
        return
    old = Settings.read(out)
    fix = "rerun with the study's own settings, or choose another --output for a new study"
    was, now = {p.key: p.spec for p in old.space}, {p.key: p.spec for p in new.space}
    for key in [*now, *(k for k in was if k not in now)]:
        if was.get(key) != now.get(key):
            raise RunError(f"tune {out} was started with {_space_text(key, was.get(key))} but this command gives "
                           f"{_space_text(key, now.get(key))}; {fix}")
    for name, a, b in (("--study", old.study, new.study), ("--storage", old.storage, new.storage)):
        if a != b:
            raise RunError(f"tune {out} was started with {name} {a or '(the journal file)'} but this command gives "
                           f"{b or '(the journal file)'}; {fix}")
    keys = [p.key for p in new.space]
    diff = first_difference(_without(old.resolved, keys), _without(new.resolved, keys))
    if diff is not None:
        key, a, b = diff
        raise RunError(f"tune {out} was started with {key}={a!r} but this command gives {b!r}; {fix}")


def redact(url: str) -> str:
    """A storage URL without its password (give it by PGPASSWORD or ~/.pgpass instead: tune.json keeps none)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).set(password=None).render_as_string(hide_password=False)
    except ArgumentError:
        raise ConfigError(f"--storage {url!r} is not a database URL (e.g. postgresql://user@host:5432/db); "
                          "leave it out for the journal file") from None


def with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg
    (3), so where only psycopg2 is installed the URL names it (``postgresql+psycopg2://``)."""
    import importlib.util

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if (parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None
            and importlib.util.find_spec("psycopg2") is not None):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def open_study(out: Path, settings: Settings, storage_url: str | None, create: bool = False) -> optuna.Study:
    """The study in its storage (the journal file unless ``storage_url``), created when ``create``."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune prints its own line per trial
    if storage_url is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage: Any = JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))
    else:
        storage = with_driver(storage_url)
    pruner = optuna.pruners.MedianPruner() if settings.pruner == "median" else optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler(constant_liar=True)  # parallel workers spread over the space
    try:
        if create:
            return optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                                       pruner=pruner, sampler=sampler, load_if_exists=True)
        return optuna.load_study(study_name=settings.study, storage=storage, pruner=pruner, sampler=sampler)
    except KeyError:
        raise RunError(f"no study {settings.study!r} in {settings.storage or out / JOURNAL_FILE}; "
                       "start it with w2s tune") from None
    except ImportError as exc:
        raise RunError(f"--storage {settings.storage}: {exc}; install the database driver "
                       "(pip install psycopg2-binary for postgresql://)") from None
    except Exception as exc:  # sqlalchemy's errors (server down, bad credentials) are not the project's own
        if type(exc).__module__.startswith("sqlalchemy"):
            raise RunError(f"--storage {settings.storage}: cannot open the database "
                           f"({str(exc).splitlines()[0]})") from None
        raise
