"""Model checkpoints (safetensors weights + a JSON description) and training state, written atomically.

A model directory written by ``w2s train-teacher`` holds ``model.safetensors`` and ``model.json``
(timm name, kwargs, classes, channels, normalization, input size), which is all stage 1 needs
to rebuild the teacher. Every file is written to a temporary name and renamed into place, so a
crash never leaves a file that looks complete. Both are checked when read back (the description
against ``pipeline.models.record``'s schema, the weights for damage), and a model is rebuilt
without ever loading weights from, reading a path or reaching a host named in its description.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.models import create_checked
from pipeline.models.record import validate_record

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the model; the message is one line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode any other tool would give it
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = _write_failure(exc, path) if isinstance(exc, Exception) else None
        if failure is not None and failure is not exc:
            raise failure from exc
        raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota, file size limit


def _write_failure(exc: Exception, path: Path) -> OSError | None:
    """``exc`` as an OSError naming ``path`` when it is a failed write, else None.

    torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), safetensors as its own
    error ("os error 28"); both become ``OSError(ENOSPC, ..., path)`` so the CLI can say what to do.
    """
    if isinstance(exc, OSError):
        return exc if exc.filename else OSError(exc.errno, exc.strerror or str(exc), str(path))
    text = str(exc)
    if "os error 28" in text or "unexpected pos" in text or "file write failed" in text:
        try:
            full = "os error 28" in text or shutil.disk_usage(path.parent).free < (1 << 20)
        except OSError:
            full = False
        return OSError(errno.ENOSPC if full else errno.EIO,
                       "No space left on device" if full else f"write failed ({text.splitlines()[0][:80]})", str(path))
    return None


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2, sort_keys=True)))


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


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_state(path: str | Path) -> dict[str, Any]:
    """A run-state checkpoint (tensors and plain data only); CheckpointError in one line if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError, OSError for a damaged file
        raise CheckpointError(f"{path} is damaged or truncated ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a run checkpoint (a {type(state).__name__}, not a mapping)")
    return state
