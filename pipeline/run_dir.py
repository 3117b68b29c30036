"""The run-directory protocol every training loop shares (``w2s train-*``, ``w2s few-shot meta``).

A run directory holds ``config.yaml``, ``metrics.jsonl`` (+ ``metrics.csv``), ``checkpoints/state.pt``
(written atomically after each epoch) and, once finished, the model files and ``result.json``,
which is what ``w2s sweep`` and ``w2s demo`` read as "finished". Without ``--resume`` a directory
holding a finished or unfinished run is refused; with it, the last epoch checkpoint is loaded.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from pipeline.checkpoint import atomic_write, load_state, save_state, write_json
from pipeline.runtime import RunError


class RunDir:
    """One run's directory: the resume rules, epoch checkpoints, metric rows, the result and the epoch line."""

    def __init__(self, path: str | Path, resume: bool, console: Console, is_main: bool = True) -> None:
        self.path, self.resume, self.console, self.is_main = Path(path), resume, console, is_main
        self.checkpoints = self.path / "checkpoints"
        self.state_path = self.checkpoints / "state.pt"

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

    def load_epoch_state(self) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
        """The last epoch checkpoint, the next epoch and the metrics history."""
        state = load_state(self.state_path)
        if self.is_main:
            self.console.print(f"resuming {self.path} after epoch {int(state['epoch']) + 1}")
        return state, int(state["epoch"]) + 1, json.loads(state["history"])

    def save_epoch_state(self, epoch: int, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
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
