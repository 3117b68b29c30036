"""Optional experiment trackers fed with every metrics row (``run.log: [tensorboard, wandb]``).

``metrics.jsonl`` and ``metrics.csv`` stay the source of truth; the trackers mirror each epoch's
row as scalars named after its keys (a histogram row such as ``weight_hist`` becomes one scalar per
bin). TensorBoard writes event files under ``<run>/tensorboard`` (needs the ``tensorboard``
package: ``pip install -e ".[tensorboard]"``); Weights & Biases runs in offline mode under
``<run>/wandb`` (``wandb sync`` uploads it later).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from pipeline.engine.runtime import RunError

TRACKERS = ("tensorboard", "wandb")


def check_trackers(names: Sequence[str]) -> None:
    """RunError for an unknown tracker or one whose package is not installed (before any training)."""
    for name in names:
        if name not in TRACKERS:
            raise RunError(f"run.log: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:  # each tracker's package has its name
            raise RunError(f"run.log asks for {name} but the {name} package is not installed (pip install {name})")


def scalars(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The numeric entries of a metrics row, lists expanded to ``key/i``; ``epoch`` is the step, not a scalar."""
    for key, value in row.items():
        if key == "epoch" or value is None or isinstance(value, (bool, str)):
            continue
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield f"{key}/{i}", float(v)
        else:
            yield key, float(value)


class Trackers:
    """The trackers a run asked for; ``log(row)`` after each epoch, ``close()`` at the end."""

    def __init__(self, run_dir: Path, names: Sequence[str], enabled: bool = True) -> None:
        self.tensorboard: Any = None
        self.wandb: Any = None
        if not enabled or not names:
            return
        check_trackers(names)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in names:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(dir=str(run_dir), name=run_dir.name, mode="offline", reinit=True)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"]) + 1
        values = dict(scalars(row))
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
