"""The config reference: generated from the dataclasses and up to date; every key has a documented meaning."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.config.schema import Config
from pipeline.config.reference import OUTPUT, keys, render, schemas

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_generated_reference_is_up_to_date() -> None:
    assert OUTPUT.read_text() == render(), "run `python -m pipeline.config.reference`"


def _section_rows(page: str, section: str) -> list[str]:
    """Table rows under ``## `section` ...`` of a hand-written page (configuration.md layout)."""
    text = (DOCS / page).read_text()
    m = re.search(rf"^## `{section}`.*?$(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    return [] if m is None else [x for x in m.group(1).splitlines() if x.startswith("| `")]


def _section_row(page: str, section: str) -> str:
    """The one summary row ``| `section` | ... |`` of a scenario page (few_shot.md layout)."""
    rows = [x for x in (DOCS / page).read_text().splitlines() if x.startswith(f"| `{section}` |")]
    return rows[0] if rows else ""


def _documented(page: str, section: str, name: str) -> bool:
    rows = _section_rows(page, section)
    if rows:
        return any(f"`{name}`" in r.split("|")[1] for r in rows)
    return f"`{name}`" in _section_row(page, section)


@pytest.mark.parametrize("title", list(schemas()))
def test_every_key_has_a_documented_meaning(title: str) -> None:
    schema, page = schemas()[title]
    pipeline_sections = {f.name: f.type for f in dataclasses.fields(Config)}
    missing = []
    for key, _, _ in keys(schema):
        section, name = key.split(".", 1)
        shared = {f.name: f.type for f in dataclasses.fields(schema)}.get(section) == pipeline_sections.get(section)
        if not (_documented(page, section, name) or (shared and _documented("configuration.md", section, name))):
            missing.append(key)
    assert not missing, f"undocumented keys in docs/{page}: {missing}"
