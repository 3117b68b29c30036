"""Reading config text: YAML files (with ``_base_``) and ``--set key=value`` overrides, safely.

Safe tags only, no key repeated in a mapping, and a bounded expanded size (an alias bomb is
refused before it is built); every problem is a one-line :class:`ConfigError` naming the file or key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config.checks import ConfigError


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=0.1"`` -> ``{"optim": {"lr": 0.1}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except RecursionError:
        raise ConfigError(f"--set {key}: nested too deeply to be a config value") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: {raw!r} is not a YAML value ({' '.join(str(exc).split())[:120]})") from exc
    if "#" in raw and "#" not in yaml.safe_dump(value):
        raise ConfigError(f"--set {key}: the '#' in {raw!r} starts a YAML comment and would be dropped; quote the value "
                          f"({key}='\"{raw.strip()}\"') or remove it")
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1}, first on line "
                    f"{seen[key] + 1}): keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


MAX_YAML_NODES = 100_000  # a config of this project has a few hundred; more is an alias ("billion laughs") bomb


class _BoundedLoader(_UniqueKeyLoader):
    """Refuses a document whose aliases expand to more than :data:`MAX_YAML_NODES` nodes.

    PyYAML shares an aliased node instead of copying it, so a 1 KB document of nested anchors loads
    quickly and then hangs whatever walks it; the expanded size is counted on the node graph (each
    node once, memoized) before anything is constructed."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to {size:.3g} values (at most {MAX_YAML_NODES:,}): "
                "an alias bomb, or a config far larger than any this tool reads", node.start_mark)
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """The number of nodes ``node`` stands for once every alias is copied out."""
    if id(node) not in memo:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


def load_yaml(text: str) -> Any:
    """Parse config text: safe tags only, no duplicate keys, bounded expanded size."""
    return yaml.load(text, Loader=_BoundedLoader)


BASE_KEY = "_base_"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, any other value replaces the base's."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: str | Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, over the file its ``_base_`` names (a path relative to it, mmengine's convention).

    A variant is then a few lines on its base: ``_base_: res56_res20_adaptconf.yaml`` and the keys it changes.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found" + (f" (the _base_ of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"{p}: _base_ chain loops back to a file it came from ({' -> '.join(map(str, chain))})")
    try:
        data = load_yaml(p.read_text()) or {}
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{p}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: {BASE_KEY} must be one file path, got {base!r}")
    return _merge(read_config_file(p.parent / base, chain + (p.resolve(),)), data)
