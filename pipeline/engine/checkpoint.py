"""Run-state checkpoints and atomic file writes.

Every file a run writes goes to a temporary name and is renamed into place, so a crash never leaves
a file that looks complete, and a failed write (a full disk) becomes an OSError naming the file.
Model files (weights + description) are in ``pipeline/models/files.py``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

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


def training_state(optimizer: Any, scheduler: Any, scaler: Any) -> dict[str, Any]:
    """What a checkpoint holds besides the weights: optimizer, schedule, gradient scaler and torch's RNG."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state()}


def load_training_state(state: dict[str, Any], optimizer: Any, scheduler: Any, scaler: Any) -> None:
    """Restore what :func:`training_state` saved, so a resumed run continues its exact trajectory."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])


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
