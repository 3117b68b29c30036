"""The attributes a store's readers rely on, checked on open, so an edited or damaged ``zarr.json``
ends in one line naming the attribute (instead of a KeyError, a division by zero or a huge
allocation later)."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import zarr

from store.chunks import StoreError

SCHEMA_VERSION = 1
CREATING = "creating"
STATUSES = (CREATING, "partial", "complete")
DTYPES = ("float16", "float32")
LAYOUTS = ("full", "top_k")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_attributes(path: str, group: zarr.Group) -> None:
    """Refuse a store whose attributes are missing, of the wrong type, or disagree with its arrays.

    Every attribute that readers rely on is checked, so an edited or damaged ``zarr.json`` ends in one
    line naming the attribute instead of a KeyError, a division by zero or a huge allocation later.
    """
    a = dict(group.attrs)
    bad = _attribute_error(path, a)

    for key in ("num_samples", "num_views", "num_classes", "param_dim", "chunk_samples"):
        if not _is_count(a.get(key)):
            raise bad(key, "a positive integer")
    if a.get("status") not in STATUSES:
        raise bad("status", " or ".join(STATUSES))
    if a.get("layout", "full") not in LAYOUTS:
        raise bad("layout", " or ".join(LAYOUTS))
    if a.get("dtype", "float16") not in DTYPES:
        raise bad("dtype", " or ".join(DTYPES))
    if a.get("layout") == "top_k" and not (_is_count(a.get("top_k")) and a["top_k"] <= a["num_classes"]):
        raise bad("top_k", f"an integer in 1..{a['num_classes']}")
    if a["status"] == "complete":
        acc = a.get("teacher_accuracy")
        if not (isinstance(acc, list) and len(acc) == a["num_views"]
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in acc)):
            raise bad("teacher_accuracy", f"a list of {a['num_views']} numbers")
    n, v, c = a["num_samples"], a["num_views"], a["num_classes"]
    name = "logits" if a.get("layout", "full") == "full" else "topk_values"
    k = c if name == "logits" else a["top_k"]
    shapes = {name: (n, v, k), "view_params": (n, v, a["param_dim"]), "labels": (n,),
              "chunk_crc": (math.ceil(n / a["chunk_samples"]), v)}
    for array, shape in shapes.items():
        try:
            have = tuple(group[array].shape)
        except KeyError:
            raise StoreError(f"store {path}: array {array} is missing; write the store again with "
                             "`w2s infer-teacher` to a new teacher.store path") from None
        if have != shape:
            raise StoreError(f"store {path}: array {array} has shape {have} but the attributes (num_samples, "
                             f"num_views, num_classes, chunk_samples) give {shape}; its zarr.json was edited or "
                             "damaged: write the store again with `w2s infer-teacher` to a new teacher.store path")


def _attribute_error(path: str, attrs: Mapping[str, Any]) -> Callable[[str, str], StoreError]:
    def bad(key: str, want: str) -> StoreError:
        return StoreError(f"store {path}: attribute {key} is {attrs.get(key, '(missing)')!r}, expected {want}; its "
                          "zarr.json was edited or damaged: write the store again with `w2s infer-teacher` "
                          "to a new teacher.store path")
    return bad


def check_provenance(path: str, attrs: Mapping[str, Any]) -> None:
    """Refuse a store without the teacher and dataset records that ``infer-teacher`` writes (for ``inspect``)."""
    bad = _attribute_error(path, attrs)
    for key, fields in (("teacher", ("model", "sha256")), ("dataset", ("source", "split", "fingerprint"))):
        record = attrs.get(key)
        if not isinstance(record, Mapping) or not all(isinstance(record.get(f), str) for f in fields):
            raise bad(key, f"a mapping with string {', '.join(fields)}")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _normalize(value: Any) -> Any:
    """Compare lists and tuples alike (JSON attributes come back as lists)."""
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def first_mismatch(attrs: Mapping[str, Any], expected: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first nested key (dotted) of ``expected`` whose value differs in ``attrs``: (key, have, want)."""
    have: dict[str, Any] = {}
    _flatten("", dict(attrs), have)
    want: dict[str, Any] = {}
    _flatten("", dict(expected), want)
    for key, value in want.items():
        if _normalize(have.get(key)) != _normalize(value):
            return key, have.get(key), value
    return None
