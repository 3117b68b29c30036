"""Model files: safetensors weights + a JSON description, written atomically and checked when read back.

A model directory written by ``w2s train-teacher`` holds ``model.safetensors`` and ``model.json``
(timm name, kwargs, classes, channels, normalization, input size), which is all stage 1 needs
to rebuild the teacher. Both are checked when read back (the description against
``pipeline.models.record``'s schema, the weights for damage), and a model is rebuilt without ever
loading weights from, reading a path or reaching a host named in its description.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.engine.checkpoint import CheckpointError, atomic_write, write_json
from pipeline.models import create_checked
from pipeline.models.record import validate_record

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_model(model: nn.Module, directory: str | Path, meta: dict[str, Any], stem: str = "model") -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` into ``directory``; returns the weights path."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    weights = directory / f"{stem}.safetensors"
    atomic_write(weights, lambda p: save_file(state, p))
    write_json(directory / f"{stem}.json", meta)
    return weights


def resolve_model_path(path: str | Path) -> tuple[Path, Path]:
    """A run/model directory or a ``.safetensors`` file -> (weights, description) paths."""
    p = Path(path)
    weights = p / MODEL_FILE if p.is_dir() else p
    meta = weights.with_suffix(".json")
    if not weights.is_file():
        raise CheckpointError(f"teacher checkpoint {weights} not found; train one with `w2s train-teacher`")
    if not meta.is_file():
        raise CheckpointError(f"{meta} not found next to {weights}: a model written by `w2s train-teacher` has both")
    return weights, meta


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``model``; a missing/unexpected key or shape mismatch names the first one."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise CheckpointError(f"{origin}: unexpected key {key!r} (the checkpoint is of another architecture)")
        if tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{origin}: shape mismatch at {key!r}: checkpoint {tuple(value.shape)}, "
                                  f"model {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{origin}: missing key {missing[0]!r} (and {len(missing) - 1} more)")
    model.load_state_dict(state)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any], str]:
    """Rebuild a model saved by :func:`save_model`: (model in eval mode, description, weights sha256)."""
    weights, meta_path = resolve_model_path(path)
    meta = read_record(meta_path)
    try:
        model = create_checked(meta["model"], meta["num_classes"], meta["in_chans"], meta.get("kwargs", {}),
                               f"{meta_path}: kwargs")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    load_state_strict(model, read_weights(weights), str(weights))
    return model.eval(), meta, file_sha256(weights)


def read_record(path: Path) -> dict[str, Any]:
    """A model description (``model.json``), checked against the schema; CheckpointError names the file and key."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); retrain with `w2s train-teacher` or point "
                              "teacher.checkpoint at a good one") from None
    try:
        return validate_record(record)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a damaged one is a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is damaged or truncated ({exc}); retrain with `w2s train-teacher` or point "
                              "teacher.checkpoint at a good one") from None
