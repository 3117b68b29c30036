"""The one training loop every scenario plugs into: a :class:`Task` says what a step is, :class:`RunLoop` runs it.

The loop owns the run directory (``pipeline.engine.run_dir``): the lock, the config snapshot, the
resume rules, atomic epoch checkpoints and the recovery checkpoints inside an epoch
(``run.checkpoint_every_steps``, also under torchrun), named metric rows (``metrics.jsonl`` /
``metrics.csv`` and the optional trackers of ``pipeline.engine.trackers``), the progress bar, the
non-finite checks, the evaluation hook and ``result.json``, to which it adds the epochs selected
over the whole metric history (:func:`epoch_selection`). A task (supervised and student runs in
``pipeline.train_student``, Meta-Baseline in ``pipeline.scenarios.few_shot.meta``, the Sel-CL stages in
``pipeline.scenarios.sel_cl``) builds its data and model in :meth:`Task.prepare`, yields an epoch's batches,
and turns one batch into one optimizer step whose named terms it returns in a :class:`StepOut`.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from pipeline.engine.checkpoint import CheckpointError, load_state, save_state
from pipeline.engine.nonfinite import LossWatch, SkippedSteps, check_step, check_weights
from pipeline.engine.preemption import Preempted, stop_requested
from pipeline.engine.run_dir import RunDir, epoch_line
from pipeline.engine.runtime import Dist, RunError, all_reduce_sum, main_lock
from pipeline.engine.trackers import Trackers


@dataclass
class StepOut:
    """One optimizer step as the loop sees it: the loss, and named metric sums with their weights.

    ``metrics[name] = (sum, weight)``: the epoch's row holds ``sum of sums / sum of weights`` (a
    sample-weighted mean when weight is the batch size). A sum may be a vector (a histogram).
    """

    loss: float
    metrics: dict[str, tuple[Any, float]] = field(default_factory=dict)


class MetricSums:
    """Named running sums over an epoch's steps, reduced over ranks by name (no positional layout)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: Mapping[str, tuple[Any, float]]) -> None:
        for name, (value, weight) in metrics.items():
            v = np.asarray(value, dtype=np.float64)
            self.sums[name] = self.sums[name] + v if name in self.sums else v.copy()
            self.weights[name] = self.weights.get(name, 0.0) + float(weight)

    def state(self) -> dict[str, Any]:
        return {"sums": {k: v.tolist() for k, v in self.sums.items()}, "weights": self.weights}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "MetricSums":
        out = cls()
        out.sums = {k: np.asarray(v, dtype=np.float64) for k, v in state["sums"].items()}
        out.weights = dict(state["weights"])
        return out

    def means(self, device: torch.device, dist: Dist) -> dict[str, Any]:
        """Every metric's weighted mean over the steps of all ranks (names in sorted order on every rank)."""
        names = sorted(self.sums)
        flat = [x for n in names for x in np.atleast_1d(self.sums[n]).tolist()] + [self.weights[n] for n in names]
        flat = all_reduce_sum(flat, device, dist)
        out: dict[str, Any] = {}
        pos = 0
        for n in names:
            size = np.atleast_1d(self.sums[n]).size
            out[n] = flat[pos:pos + size] if self.sums[n].ndim else flat[pos]
            pos += size
        for i, n in enumerate(names):
            w = flat[pos + i]
            out[n] = [x / w for x in out[n]] if isinstance(out[n], list) else out[n] / w
        return out


@dataclass
class Epoch:
    """An epoch as a task lays it out: its step count and the batches from the first step still to run."""

    steps: int
    batches: Iterable[Any]


class ResolvedConfig(Protocol):
    """A run's resolved config: its ``to_dict()`` is written to config.yaml and compared on --resume."""

    def to_dict(self) -> dict[str, Any]: ...


class Task:
    """What :class:`RunLoop` drives: every attribute and hook the loop uses; subclasses fill in the hooks.

    After :meth:`prepare`, ``device``/``dist`` are set and ``epochs``, ``output`` and
    ``checkpoint_every_steps`` describe the run.
    """

    cfg: ResolvedConfig
    epochs: int
    output: Path
    device: torch.device
    dist: Dist
    checkpoint_every_steps: int = 0
    trackers: Sequence[str] = ()
    lr_key: str = "optim.lr"  # the config key named in divergence errors
    skipped: SkippedSteps | None = None  # fp16 steps skipped in a row
    epoch_line: Sequence[tuple[str, str]] = ()  # (row key, template) for the console's epoch line
    csv_keys: Sequence[str] | None = None  # metrics.csv columns (None: metrics.jsonl only)

    def prepare(self) -> None:
        """Set up the device and process group, data, models, optimizer (before any resume)."""
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        """The modules whose weights must stay finite."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (weights, optimizer, schedule, random states)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any], origin: Path) -> None:
        raise NotImplementedError

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 loss scaler whose skipped steps the loop counts (None: the task has none)."""
        return None

    def epoch(self, epoch: int, start_step: int) -> Epoch:
        """The epoch's batches from ``start_step`` (a resume replays what random state the skipped ones used)."""
        raise NotImplementedError

    def train_step(self, batch: Any, epoch: int, step: int) -> StepOut:
        raise NotImplementedError

    def epoch_row(self, epoch: int, means: dict[str, Any], elapsed: float) -> dict[str, Any]:
        """The epoch's metrics row from the reduced step metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Metrics measured at the end of each epoch (added to its row)."""
        return {}

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Save the model files (main process) and return the run's result."""
        raise NotImplementedError

    def close(self) -> None:
        """Release background work (readers); called when the run ends, however it ends."""


BEST_TEST_NOTE = ("highest test top-1 over epochs, upstream's CheckpointSaver metric (eval_metric top1): the epoch "
                  "is selected on the test set, so it is optimistic; the headline test_acc is the last epoch's")


def epoch_selection(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The result's selected epochs, from every metrics row (so also after ``--resume``).

    ``best_test_top1``/``best_test_epoch``: upstream's metric, the best test accuracy over epochs;
    with a validation split ``best_epoch``/``best_val_acc``/``test_acc_at_best``: the test accuracy
    at the best-validation epoch. Ties go to the earliest epoch, as in timm's CheckpointSaver.
    Epochs are 0-based, as in ``metrics.jsonl``. Empty for tasks without a test accuracy per epoch.
    """
    out: dict[str, Any] = {}
    tested = [r for r in history if "test_acc" in r]
    if tested:
        best = max(tested, key=lambda r: r["test_acc"])
        out.update(best_test_top1=best["test_acc"], best_test_epoch=int(best["epoch"]), best_test_note=BEST_TEST_NOTE)
    validated = [r for r in tested if "val_acc" in r]
    if validated:
        best = max(validated, key=lambda r: r["val_acc"])
        out.update(best_epoch=int(best["epoch"]), best_val_acc=best["val_acc"], test_acc_at_best=best["test_acc"])
    return out


def progress(console: Console) -> Progress:
    """A transient progress bar, shown only on a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


class RunLoop:
    """Run a :class:`Task` in its run directory; see the module docstring."""

    def __init__(self, task: Task, resume: bool, console: Console,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.task, self.console = task, console
        self.on_epoch = on_epoch  # sees each finished epoch's row on rank 0 (an Optuna trial reports it)
        self.run_dir = RunDir(task.output, resume, console)
        self.step_path = self.run_dir.checkpoints / "step.pt"
        self.partial: dict[str, Any] | None = None  # where a step checkpoint left the epoch it interrupted
        self.loss_watch = LossWatch()  # stops a run whose finite loss explodes

    def run(self) -> dict[str, Any]:
        task = self.task
        with main_lock(task.output):
            try:
                return self._run()
            finally:
                task.close()

    def _run(self) -> dict[str, Any]:
        task = self.task
        self.run_dir.check_config(task.cfg.to_dict())
        task.prepare()
        main = task.dist.is_main
        self.run_dir.is_main = main
        start, history = self._restore()
        if main:
            self.run_dir.write_config(task.cfg.to_dict())
        trackers = Trackers(task.output, task.trackers, enabled=main)
        try:
            for epoch in range(start, task.epochs):
                row = self.train_epoch(epoch)  # stops at a non-finite loss, before this epoch's checkpoint
                check_weights(task.modules(), epoch, task.epochs, task.device, task.dist, lr_key=task.lr_key)
                row.update(task.evaluate())
                history.append(row)
                if main:
                    self.run_dir.write_metrics(history, task.csv_keys)
                    self.run_dir.save_epoch_state(epoch, task.state_dict(), history)
                    self.step_path.unlink(missing_ok=True)  # superseded
                    trackers.log(row)
                    self.console.print(epoch_line(row, task.epochs, task.epoch_line))
                    if self.on_epoch is not None:
                        self.on_epoch(row)
                if epoch + 1 < task.epochs and stop_requested(task.dist.world, task.device):
                    self._preempted(f"after epoch {epoch + 1}")
        finally:
            trackers.close()
        result = {**task.finish(history), **epoch_selection(history)}
        if main:
            self.run_dir.write_result(result)
        return result

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch's steps (from a step checkpoint's position when resuming) and its metrics row."""
        task = self.task
        partial = self.partial if self.partial is not None and self.partial["epoch"] == epoch else None
        done = partial["step"] if partial is not None else 0
        start = time.perf_counter()
        ep = task.epoch(epoch, done)
        sums = MetricSums()
        if partial is not None:
            sums = MetricSums.from_state(partial["sums"])
            random.setstate(partial["py_random"])
            self.partial = None
        if task.skipped is None:  # after a resume loaded the scaler; the count runs across epochs
            task.skipped = SkippedSteps(task.grad_scaler())
        every = task.checkpoint_every_steps
        with progress(self.console) as bar:
            bar_task = bar.add_task(f"epoch {epoch + 1}/{task.epochs}", total=ep.steps, completed=done)
            for step, batch in enumerate(ep.batches, start=done):
                out = task.train_step(batch, epoch, step)
                task.skipped.update()
                check_step(out.loss, task.skipped, epoch, task.epochs, step, ep.steps, task.device, task.dist,
                           lr_key=task.lr_key, watch=self.loss_watch)
                sums.add(out.metrics)
                bar.advance(bar_task)
                if step + 1 < ep.steps:
                    if stop_requested(task.dist.world, task.device):
                        self._step_checkpoint(epoch, step + 1, sums)
                        self._preempted(f"in epoch {epoch + 1} after step {step + 1}")
                    if every and (step + 1) % every == 0:
                        self._step_checkpoint(epoch, step + 1, sums)
        elapsed = time.perf_counter() - start
        return task.epoch_row(epoch, sums.means(task.device, task.dist), elapsed)

    def _preempted(self, where: str) -> None:
        if self.task.dist.is_main:
            self.console.print(f"stop requested: checkpoint written {where}; --resume continues from there")
        raise Preempted(f"{self.task.output}: stopped {where}")

    # -- checkpoints -------------------------------------------------------------------------
    def _restore(self) -> tuple[int, list[dict[str, Any]]]:
        """Load the last epoch checkpoint (and a later step checkpoint) when resuming; (next epoch, history)."""
        if not self.run_dir.check_start(self.run_dir.has_epoch_state or self.step_path.exists()):
            return 0, []
        start, history = 0, []
        if self.run_dir.has_epoch_state:
            state, start, history = self.run_dir.load_epoch_state()
            self.task.load_state_dict(state, self.run_dir.state_path)
        self._restore_step(start)
        return start, history

    def _restore_step(self, start_epoch: int) -> None:
        """Continue from a step checkpoint of the epoch that the last epoch checkpoint leaves next."""
        if not self.step_path.exists():
            return
        try:
            state = load_state(self.step_path)
            int(state["epoch"])
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            if self.task.dist.is_main:
                self.console.print(f"{exc if isinstance(exc, CheckpointError) else self.step_path}: ignored; "
                                   "resuming from the last epoch checkpoint")
            return
        if int(state["epoch"]) != start_epoch:  # older than the last epoch checkpoint: superseded
            return
        ranks = json.loads(state["ranks"])
        dist = self.task.dist
        if len(ranks) != dist.world:
            raise RunError(f"{self.step_path} was written by {len(ranks)} processes but this run has {dist.world}; "
                           f"resume with the same number of processes")
        self.task.load_state_dict(state, self.step_path)
        mine = ranks[dist.rank]
        self.partial = {"epoch": start_epoch, "step": int(state["step"]), "sums": mine["sums"],
                        "py_random": _random_state(mine["py_random"])}
        if dist.is_main:
            self.console.print(f"resuming epoch {start_epoch + 1} after step {state['step']} (step checkpoint)")

    def _step_checkpoint(self, epoch: int, steps_done: int, sums: MetricSums) -> None:
        """A recovery checkpoint inside an epoch, written atomically by rank 0 with every rank's own state.

        The weights and optimizer are the same on every rank; the metric sums and python's random
        state (timm's random erasing) are per rank, so they are gathered first.
        """
        mine = {"sums": sums.state(), "py_random": random.getstate()}
        dist = self.task.dist
        ranks = [mine]
        if dist.world > 1:
            ranks = [None] * dist.world
            torch_dist.all_gather_object(ranks, mine)
        if dist.is_main:
            save_state(self.step_path, {"epoch": epoch, "step": steps_done, **self.task.state_dict(),
                                        "ranks": json.dumps(ranks)})


def _random_state(saved: list[Any]) -> tuple[Any, ...]:
    """``random.getstate()`` back from its JSON form (lists for tuples)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss
