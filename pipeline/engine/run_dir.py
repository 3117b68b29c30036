"""The run-directory protocol every training loop shares (``w2s train-*``, ``w2s few-shot meta``).

A run directory holds ``config.yaml``, ``metrics.jsonl`` (+ ``metrics.csv``), ``checkpoints/state.pt``
(written atomically after each epoch) and, once finished, the model files and ``result.json``,
which is what ``w2s sweep`` and ``w2s demo`` read as "finished". Without ``--resume`` a directory
holding a finished or unfinished run is refused; with it, the config is compared with the stored
``config.yaml`` (:func:`first_difference`: a key that changes results must not differ) and the last
epoch checkpoint is loaded.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from rich.console import Console

from pipeline.engine.checkpoint import CheckpointError, atomic_write, load_state, save_state, write_json
from pipeline.engine.runtime import RunError


RESUME_FREE = frozenset({
    "run.output", "run.device", "run.num_threads", "run.log", "run.checkpoint_every_steps",
    "optim.eval_batch_size", "teacher.batch_size", "teacher.read_buffer", "launcher",
})
"""Keys a resumed run may change: where it runs, threads, logging, checkpoint frequency and batch sizes of passes
that do not train (evaluation, stage-1 inference) or only buffer reads, and where the cluster runs it. Every other key changes results."""

_MISSING = object()


def first_difference(stored: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first key (dotted, outside :data:`RESUME_FREE`) whose value differs, with its stored and current values."""
    for key in [*now, *(k for k in stored if k not in now)]:
        full = f"{prefix}{key}"
        if full in RESUME_FREE:
            continue
        a, b = stored.get(key, _MISSING), now.get(key, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{full}.")
            if found is not None:
                return found
        elif a != b:
            return full, None if a is _MISSING else a, None if b is _MISSING else b
    return None


class RunDir:
    """One run's directory: the resume rules, epoch checkpoints, metric rows, the result and the epoch line."""

    def __init__(self, path: str | Path, resume: bool, console: Console, is_main: bool = True) -> None:
        self.path, self.resume, self.console, self.is_main = Path(path), resume, console, is_main
        self.checkpoints = self.path / "checkpoints"
        self.state_path = self.checkpoints / "state.pt"
        self.prev_path = self.checkpoints / "state.prev.pt"

    @property
    def finished(self) -> bool:
        return (self.path / "result.json").exists()

    def check_start(self, has_checkpoint: bool) -> bool:
        """Apply the resume rules; True when there is a checkpoint to continue from."""
        if self.finished and not self.resume:
            raise RunError(f"{self.path} already holds a finished run; choose another run.output")
        if not has_checkpoint:
            if self.resume and self.is_main:
                self.console.print(f"no checkpoint in {self.path}; starting from scratch")
            return False
        if not self.resume:
            raise RunError(f"{self.path} holds an unfinished run; pass --resume to continue it or choose another "
                           "run.output")
        return True

    def check_config(self, config: Mapping[str, Any]) -> None:
        """On ``--resume``, refuse a config that would change the run's results (see :data:`RESUME_FREE`)."""
        path = self.path / "config.yaml"
        if not (self.resume and path.exists()):
            return
        try:
            stored = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RunError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); cannot check what --resume "
                           "continues") from exc
        diff = first_difference(stored if isinstance(stored, dict) else {}, config)
        if diff is not None:
            key, was, now = diff
            raise RunError(f"cannot resume {self.path}: {key} is {now!r} now but {was!r} in its config.yaml; resume "
                           "with the stored value, or start another run (another run.output)")

    def write_config(self, config: Mapping[str, Any]) -> None:
        """``config.yaml``, the run's resolved config (atomic)."""
        text = yaml.safe_dump(dict(config), sort_keys=False)
        atomic_write(self.path / "config.yaml", lambda p: Path(p).write_text(text))

    @property
    def has_epoch_state(self) -> bool:
        return self.state_path.exists() or self.prev_path.exists()

    def load_epoch_state(self) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
        """The last readable epoch checkpoint (``state.pt``, else the one before, ``state.prev.pt``), the next
        epoch and the metrics history."""
        problem = f"{self.state_path} is missing"
        for path in (self.state_path, self.prev_path):
            if not path.exists():
                continue
            try:
                state = load_state(path)
                epoch, history = int(state["epoch"]), json.loads(state["history"])
            except (CheckpointError, KeyError, TypeError, ValueError) as exc:
                problem = str(exc) if isinstance(exc, CheckpointError) else f"{path} is not a run checkpoint"
                continue
            if self.is_main:
                note = f" ({problem}; using the checkpoint before it)" if path == self.prev_path else ""
                self.console.print(f"resuming {self.path} after epoch {epoch + 1}{note}")
            return state, epoch + 1, history
        raise RunError(f"cannot resume {self.path}: {problem} and no earlier checkpoint is readable; remove "
                       f"{self.checkpoints} to train from scratch")

    def save_epoch_state(self, epoch: int, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``state.pt`` (atomic); the one it replaces is kept as ``state.prev.pt``, the fallback of a damaged one."""
        if self.state_path.exists():
            os.replace(self.state_path, self.prev_path)
        save_state(self.state_path, {"epoch": epoch, **state, "history": json.dumps(history)})

    def write_metrics(self, history: list[dict[str, Any]], csv_keys: Sequence[str] | None = None) -> None:
        """``metrics.jsonl`` (every row), and ``metrics.csv`` with the ``csv_keys`` that occur when given."""
        lines = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write(self.path / "metrics.jsonl", lambda p: Path(p).write_text(lines))
        if csv_keys is None:
            return
        keys = [k for k in csv_keys if any(k in r for r in history)]

        def write_csv(p: str) -> None:
            with open(p, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                w.writerows(history)

        atomic_write(self.path / "metrics.csv", write_csv)

    def write_result(self, result: dict[str, Any]) -> None:
        """``result.json``: the run is finished."""
        write_json(self.path / "result.json", result)


def epoch_line(row: dict[str, Any], epochs: int, fields: Sequence[tuple[str, str]]) -> str:
    """``epoch e/E`` then, for each ``(key, template)`` whose key is in ``row``, ``template.format(value)``."""
    return "  ".join([f"epoch {int(row['epoch']) + 1}/{epochs}"]
                     + [template.format(row[key]) for key, template in fields if key in row])
