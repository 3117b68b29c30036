"""The config reference generated from the dataclasses: every key, its type and default (``docs/config_keys.md``).

``python -m pipeline.config.reference`` rewrites the file; ``tests/config/test_config_reference.py``
fails when it is stale, or when a key has no row in the hand-written ``docs/configuration.md``
(or, for the few-shot and noisy-label schemas, their scenario pages).
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Iterator

from pipeline.config.schema import Config
from pipeline.scenario import scenarios


def schemas() -> dict[str, tuple[type, str]]:
    """Title -> (schema, the docs page with its keys' meanings): the core's, then each scenario's own."""
    out: dict[str, tuple[type, str]] = {
        "pipeline (w2s train-teacher, train-student, infer-teacher, pretrain, sweep)": (Config, "configuration.md")}
    for sc in scenarios():
        out.update(sc.schemas)
    return out

OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "config_keys.md"


def _type_name(tp: Any) -> str:
    text = str(tp).replace("typing.", "")
    return tp.__name__ if isinstance(tp, type) else text


def keys(schema: type, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted key, type, default) of every leaf of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(schema)
    default = schema()
    for f in dataclasses.fields(schema):
        value = getattr(default, f.name)
        if f.metadata.get("sections"):  # the scenarios' sections of Config
            for name, section in value.items():
                yield from keys(type(section), f"{prefix}{name}.")
        elif dataclasses.is_dataclass(value):
            yield from keys(type(value), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", _type_name(hints[f.name]), value


def render() -> str:
    out = ["# Config keys (generated)", "",
           "Generated from the config dataclasses by `python -m pipeline.config.reference`; do not edit.",
           "What each key means: [configuration.md](configuration.md) and the scenario pages.", ""]
    for title, (schema, page) in schemas().items():
        out += [f"## {title}", "", f"Meanings: [{page}]({page}).", "", "| key | type | default |", "|---|---|---|"]
        out += [f"| `{k}` | `{t}` | `{v!r}` |".replace(" | None`", " \\| None`") for k, t, v in keys(schema)]
        out.append("")
    return "\n".join(out)


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
