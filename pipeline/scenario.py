"""The scenario plug-in interface: what a scenario adds to the core, without the core importing it.

A scenario (noisy labels with Sel-CL, few-shot learning, or one of your own) is a subclass of
:class:`Scenario` decorated with :func:`register_scenario`. It may contribute

- config ``sections``: YAML keys of their own, each a dataclass whose fields declare their rules
  (:func:`pipeline.config.checks.setting`); they become attributes of the run's config;
- ``check(cfg)``: rules across keys, run when a config is loaded;
- ``training_rows(cfg, source)``: which rows of the training split stage 1 and stage 2 use;
- ``target_hook(cfg, student)``: a step hook that replaces the student's training target;
- ``schemas``: the config schemas of its own commands, for the generated key reference.

Scenarios register when their package is imported: the built-in ones by ``pipeline.scenarios``
(which the CLI, the experiments and the test suite import), and any installed package through the
``w2s.scenarios`` entry-point group (``[project.entry-points."w2s.scenarios"]`` in its
pyproject.toml), loaded the first time the core asks. The smallest example is in
``tests/test_scenario_plugin.py``.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import Tensor

    from pipeline.data.sources.base import Source

ENTRY_POINT_GROUP = "w2s.scenarios"


class TargetHook(Protocol):
    """Replaces a student's training target inside its step (after mixing, before the loss)."""

    def __call__(self, batch: Any, epoch: int, lam: float, target: "Tensor") -> "Tensor": ...


class Scenario:
    """A scenario's hooks; each default leaves the core's behaviour unchanged."""

    name: ClassVar[str] = ""
    sections: ClassVar[dict[str, type]] = {}
    # config schemas of the scenario's own commands, with the docs page that explains their keys
    schemas: ClassVar[dict[str, tuple[type, str]]] = {}

    def check(self, cfg: Any) -> None:
        """Rules across keys, at load; raise ``ConfigError`` naming the key."""

    def training_rows(self, cfg: Any, source: "Source") -> "Source | None":
        """The training rows to keep (for the store and the student alike), or None for all of them."""
        return None

    def target_hook(self, cfg: Any, student: Any) -> TargetHook | None:
        """A hook that replaces the training target of ``student`` (a ``pipeline.train_student.Trainer``)."""
        return None


SCENARIOS: dict[str, Scenario] = {}
_loaded = {"entry_points": False}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: register a scenario and its config sections (each section name once)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    if cls.name in SCENARIOS and type(SCENARIOS[cls.name]) is not cls:
        raise ValueError(f"scenario {cls.name!r} is registered twice")
    taken = {s: n for n, sc in SCENARIOS.items() if n != cls.name for s in sc.sections}
    for section in cls.sections:
        if section in taken:
            raise ValueError(f"config section {section!r} of scenario {cls.name!r} is already {taken[section]!r}'s")
    SCENARIOS[cls.name] = cls()
    return cls


def scenarios() -> list[Scenario]:
    """Every registered scenario, after loading the installed ones (entry points) once."""
    if not _loaded["entry_points"]:
        _loaded["entry_points"] = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()  # importing the module registers its scenario
    return list(SCENARIOS.values())


def scenario_sections() -> dict[str, type]:
    """Config sections contributed by scenarios: YAML key -> dataclass."""
    return {name: cls for sc in scenarios() for name, cls in sc.sections.items()}


def check_scenarios(cfg: Any) -> None:
    for sc in scenarios():
        sc.check(cfg)


def training_rows(cfg: Any, source: "Source") -> tuple["Source", str] | None:
    """The rows a scenario keeps, with that scenario's name; None when every row is used."""
    for sc in scenarios():
        kept = sc.training_rows(cfg, source)
        if kept is not None:
            return kept, sc.name
    return None


def target_hooks(cfg: Any, student: Any) -> list[TargetHook]:
    return [h for sc in scenarios() if (h := sc.target_hook(cfg, student)) is not None]
