"""What a model may be built from: the keyword arguments passed on to timm, and the schema of ``model.json``.

``model.json`` (written beside ``model.safetensors`` by ``w2s train-teacher`` and the other training
commands) is read back from a file a user may have edited or been sent, and timm acts on some keyword
arguments by loading weights, reading a path or reaching a host. So those keys are never passed on,
and a record is checked key by key before anything is built from it; a bad one is one line naming
the key. This module imports nothing from ``pipeline``, so the model files can use it too.
"""
from __future__ import annotations

import math
from typing import Any

import timm

# keys timm acts on by loading weights, reading a file or reaching a host, or that change what is built
# (features only, device, dtype); ``pretrained`` is allowed only as false, which create passes anyway
RESERVED_KWARGS = frozenset({
    "pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
    "pretrained_filter_fn", "pretrained_model_args", "cache_dir", "model_cfg", "feature_cfg", "features_only",
    "kwargs_filter", "scriptable", "exportable", "no_jit", "device", "dtype"})

# what timm's create_model passes to every entrypoint besides the caller's keyword arguments
TIMM_PASSES = frozenset({"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})

# the keys of a model record and what each holds; the first three are required
RECORD_KEYS = {"model": "a registered timm model name", "num_classes": "an integer > 0",
               "in_chans": "an integer > 0", "kwargs": "a mapping of keyword arguments",
               "mean": "a list of in_chans numbers", "std": "a list of in_chans numbers > 0",
               "input_size": "an integer > 0", "dataset": "a mapping", "stage": "a string",
               "cosine_scale": "a finite number", "encoder_init": "a mapping"}
REQUIRED_KEYS = ("model", "num_classes", "in_chans")


def refuse_unknown(entrypoint: str, extra: dict[str, Any]) -> None:
    """Raise Python's TypeError for a keyword ``entrypoint`` does not name (timm's own pass-through keys aside).

    The project's entrypoints take ``**kwargs`` only because timm passes :data:`TIMM_PASSES` to every
    entrypoint; anything else would otherwise be swallowed silently.
    """
    for key in extra:
        if key not in TIMM_PASSES:
            raise TypeError(f"{entrypoint}() got an unexpected keyword argument {key!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_json_value(value: Any) -> bool:
    """A JSON scalar or a (nested) list of them: nothing a mapping could smuggle in."""
    if isinstance(value, list):
        return all(_is_json_value(v) for v in value)
    return value is None or isinstance(value, (str, bool, int)) or _is_number(value)


def _problem(key: str, value: Any, record: dict[str, Any]) -> str | None:
    """Why ``record[key]`` is not what :data:`RECORD_KEYS` says, or None."""
    if key == "model":
        ok = isinstance(value, str) and timm.is_model(value)
    elif key in ("num_classes", "in_chans"):
        ok = _is_int(value) and value > 0
    elif key == "input_size":
        ok = value is None or (_is_int(value) and value > 0)
    elif key in ("mean", "std"):
        chans = record.get("in_chans")
        ok = value is None or (isinstance(value, list) and len(value) == chans and all(_is_number(v) for v in value)
                               and (key == "mean" or all(v > 0 for v in value)))
    elif key == "kwargs":
        ok = isinstance(value, dict)
    elif key in ("dataset", "encoder_init"):
        ok = isinstance(value, dict)
    elif key == "stage":
        ok = isinstance(value, str)
    else:  # cosine_scale
        ok = _is_number(value)
    return None if ok else f"{key} must be {RECORD_KEYS[key]}, got {value!r}"


def validate_record(record: Any) -> dict[str, Any]:
    """``record`` (parsed ``model.json``) checked against :data:`RECORD_KEYS`; ValueError names the first bad key.

    ``kwargs`` values must be JSON scalars or lists; whether the model takes them (and never one of
    :data:`RESERVED_KWARGS`) is checked when it is built (``pipeline.models.create_checked``).
    """
    if not isinstance(record, dict):
        raise ValueError(f"a model record is a JSON object, not a {type(record).__name__}")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise ValueError(f"{key} is missing (it must be {RECORD_KEYS[key]})")
    for key in [*REQUIRED_KEYS, *(k for k in record if k not in REQUIRED_KEYS)]:  # in_chans before mean / std
        if key not in RECORD_KEYS:
            raise ValueError(f"unknown key {key!r}; a model record holds {', '.join(RECORD_KEYS)}")
        problem = _problem(key, record[key], record)
        if problem:
            raise ValueError(problem)
    for key, value in record.get("kwargs", {}).items():
        if not _is_json_value(value):
            raise ValueError(f"kwargs.{key} must be a number, string, boolean, null or a list of them, got {value!r}")
    return record
