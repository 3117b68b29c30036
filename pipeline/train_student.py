"""Stage 2 as a task of the run loop: a student on replayed views with a cached (or online) teacher; also plain supervised runs.

``train(cfg, role="student")`` reads the teacher's logits for each sample's view of the epoch
from the store (``teacher.mode: store``) or computes them on the same replayed views
(``teacher.mode: online``). ``role="teacher"`` trains with ground truth only (the ``vanilla``
objective), which is how weak teachers and strong ceilings are made. :class:`Trainer` is the
:class:`pipeline.engine.run_loop.Task`; the loop owns the run directory, checkpoints, resume and metric
files, and every epoch ends with an evaluation on the test split's fixed view.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from timm.scheduler.scheduler import Scheduler
from torch import nn

from pipeline.config.schema import Config
from pipeline.data.loader import Batch, ViewReplayer
from pipeline.data.sources.base import Source
from pipeline.data.sources.registry import Splits, load_run_splits
from pipeline.data.views import InputSpec, ViewPolicy
from pipeline.engine.checkpoint import CheckpointError, load_training_state, training_state
from pipeline.engine.resource_checks import check_batch
from pipeline.engine.run_loop import Epoch, RunLoop, StepOut, Task
from pipeline.engine.runtime import RunError, setup, stderr_console
from pipeline.models.files import load_state_strict, save_model, unwrap
from pipeline.models.ghost_bn import set_bn_batch
from pipeline.objectives import Objective, build_objective
from pipeline.scenario import target_hooks, training_rows
from pipeline.student.accuracy import accuracy, fixed_view_replayer, predictions
from pipeline.student.data import StoreFeed, StudentData, fresh_epoch_views
from pipeline.student.setup import build_model, build_optimizer
from pipeline.student.specs import dataset_record, input_spec, mix_config, student_augment, teacher_spec
from pipeline.student.step import Precision, StudentStep, random_erasing, step_metrics
from pipeline.student.teacher import Teacher, open_teacher

METRIC_KEYS = ("epoch", "lr", "loss", "gt", "kd", "align", "weight_mean", "train_acc", "train_agreement",
               "val_acc", "test_acc", "test_agreement", "images_per_s", "epoch_s",
               "store_read_s")
EPOCH_LINE = (("loss", "loss {:.4f}"), ("train_acc", "train {:.4f}"), ("test_acc", "test {:.4f}"),
              ("weight_mean", "weight {:.3f}"), ("test_agreement", "agree {:.4f}"), ("images_per_s", "{:.0f} img/s"))


class Trainer(Task):
    """One supervised or student run; see the module docstring.

    It holds the data side (order, views, store shard) as :attr:`data`, a
    :class:`~pipeline.student.data.StudentData`, and one optimizer step's maths as :attr:`step`, a
    :class:`~pipeline.student.step.StudentStep`; scenario target hooks read the attributes below
    (``cfg``, ``train_src``, ``student_spec``, ``local_batch``, ``policy``, ``net``, ``memory_format``,
    :meth:`autocast`). The benchmarks drive its public steps one by one: ``prepare()`` (data,
    teacher, model, optimizer, replayers), ``data.epoch_sources(e)`` (the epoch's view params and
    cached logits), ``data.make_train_replayer(e)`` and ``train_step(batch, e, s)`` (one optimizer
    step and its metrics).
    """

    csv_keys = METRIC_KEYS
    epoch_line = EPOCH_LINE
    cfg: Config
    train_src: Source
    val_src: Source | None
    test_src: Source
    objective: Objective
    teacher: Teacher | None
    policy: ViewPolicy
    model: nn.Module  # the weights (saved, evaluated)
    net: nn.Module  # what trains: the model, or its DDP / compiled wrapper
    memory_format: torch.memory_format
    scaler: torch.amp.GradScaler
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    global_batch: int
    local_batch: int
    steps_per_epoch: int
    student_spec: InputSpec
    precision: Precision
    eval_replayer: ViewReplayer
    data: StudentData
    step: StudentStep
    test_teacher_pred: np.ndarray | None  # the teacher's test predictions (agreement), when it has a model

    def __init__(self, cfg: Config, role: str, console: Console | None = None) -> None:
        self.cfg, self.role = cfg, role
        self.console = console or stderr_console()
        self.output, self.epochs = Path(cfg.run.output), cfg.optim.epochs
        self.checkpoint_every_steps, self.trackers = cfg.run.checkpoint_every_steps, cfg.run.log

    # -- setup -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the data, the teacher (checking a store against the run), the model, optimizer and replayers."""
        cfg = self.cfg
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed, cfg.run.deterministic)
        splits = run_splits(cfg)
        self.train_src, self.val_src, self.test_src = splits.train, splits.val, splits.test
        self.objective = run_objective(cfg, self.role)
        mix, augment = mix_config(cfg), student_augment(cfg)
        self.teacher, self.policy = open_teacher(cfg, self.objective, splits.selection, self.device)
        store = self.teacher.store if self.teacher else None
        feed = None if store is None else StoreFeed(store, rows=splits.train_rows, read_order=cfg.teacher.read_order,
                                                    read_buffer=cfg.teacher.read_buffer)
        fresh = fresh_epoch_views(cfg, feed, self.policy, self.epochs)
        noise = getattr(self.train_src, "noise_rate", None)
        if noise is not None and self.dist.is_main:
            self.console.print(f"label noise {cfg.data.noise_mode} at rate {cfg.data.noise_rate}: "
                               f"{100 * noise:.2f}% of the training labels differ from the clean ones")
        labels = self.train_src.labels if feed is None else feed.labels()
        placed = build_model(cfg.model, cfg.run, self.train_src.num_classes, self.train_src.channels, self.device,
                             self.dist, self.console)
        self.model, self.net, self.memory_format, self.scaler = (placed.model, placed.net, placed.memory_format,
                                                                 placed.scaler)
        set_bn_batch(self.model, cfg.model.bn_batch, "model.bn_batch")  # per-GPU BN of DataParallel (ghost_bn)
        opt = build_optimizer(self.model, cfg.optim, self.dist.world, len(self.train_src))
        self.optimizer, self.scheduler = opt.optimizer, opt.scheduler
        self.global_batch, self.local_batch, self.steps_per_epoch = opt.global_batch, opt.local_batch, opt.steps_per_epoch
        self.student_spec = input_spec(self.train_src, cfg.model.mean, cfg.model.std, cfg.model.input_size)
        specs = [self.student_spec]
        if self.teacher and self.teacher.mode == "online":
            specs.append(teacher_spec(self.train_src, self.teacher.meta or {}))
        self.precision = Precision(self.device, cfg.run.amp)
        self.eval_replayer = fixed_view_replayer(self.test_src, self.student_spec, cfg.optim.eval_batch_size,
                                                 self.policy, cfg.run.device, cfg.run.num_threads)
        self.data = StudentData(self.train_src, labels, self.policy, specs, augment, feed, self.dist, cfg.run,
                                epochs=self.epochs, global_batch=self.global_batch, local_batch=self.local_batch,
                                fresh=fresh, augmented=cfg.views.augmented)
        self.step = StudentStep(self.net, self.objective, self.optimizer, self.scaler, self.precision,
                                self.memory_format, num_classes=self.train_src.num_classes, epochs=self.epochs,
                                seed=cfg.run.seed, mix=mix,
                                erasing=random_erasing(cfg.augment.random_erasing, self.device),
                                erase_before_mix=cfg.augment.erase_before_mix, teacher=self.teacher,
                                target_hooks=target_hooks(cfg, self))  # e.g. Sel-CL+ label correction
        self.test_teacher_pred = self.val_teacher_pred = None
        if self.teacher and self.teacher.model is not None:  # for agreement and the teacher's own accuracy
            self.test_teacher_pred = self._teacher_predictions(self.test_src)
        if cfg.teacher.label_val:  # the weak-supervision stopping rule: no ground truth picks the epoch
            if self.val_src is None or self.test_teacher_pred is None:
                raise RunError("teacher.label_val scores a held-out part of the training images against the "
                               "teacher's predictions; set data.val_fraction > 0 and teacher.checkpoint")
            self.val_teacher_pred = self._teacher_predictions(self.val_src)

    def _teacher_predictions(self, src: Source) -> np.ndarray:
        """The teacher's argmax on the fixed view of every sample of ``src``."""
        assert self.teacher is not None and self.teacher.model is not None
        rep = fixed_view_replayer(src, teacher_spec(src, self.teacher.meta or {}), self.cfg.optim.eval_batch_size,
                                  self.policy, self.cfg.run.device, self.cfg.run.num_threads)
        return predictions(self.teacher.model, src, rep, self.policy)

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def grad_scaler(self) -> torch.amp.GradScaler:
        return self.scaler

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's autocast (``run.amp``), for evaluation and scenario hooks that run the student."""
        return self.precision.autocast()

    # -- an epoch ----------------------------------------------------------------------------
    def epoch(self, epoch: int, start_step: int) -> Epoch:
        self.scheduler.step(epoch)  # a schedule stepped per epoch sets this epoch's lr; per update: no-op
        self.model.train(not self.cfg.model.freeze_backbone)  # a linear probe's features stay fixed: eval mode
        return self.data.epoch(epoch, start_step)

    def train_step(self, b: Batch, epoch: int, step: int) -> StepOut:
        """One optimizer step, the schedule's update (when stepped per update), and the step's named metric sums."""
        out, zs, zt = self.step.optimizer_step(b, epoch, step)
        self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
        loss = out.total.item()  # the metrics sync every step anyway
        return StepOut(loss, step_metrics(loss, out, zs, zt, b.labels, self.objective.weight_range))

    def epoch_row(self, epoch: int, means: dict[str, Any], elapsed: float) -> dict[str, Any]:
        t = self.teacher
        row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": means["loss"],
                               "gt": means["gt"], "train_acc": means["train_acc"],
                               "images_per_s": self.steps_per_epoch * self.global_batch / elapsed, "epoch_s": elapsed}
        if t is not None:
            row.update(kd=means.get("kd", 0.0), align=means.get("align", 0.0),
                       train_agreement=means["train_agreement"])
        row.update({name: means[name] for name in self.objective.terms if name not in row and name in means})
        if t is not None and t.mode == "store":
            row["store_read_s"] = self.data.read_s
        for key in ("weight_mean", "weight_hist"):
            if key in means:
                row[key] = means[key]
        return row

    def evaluate(self) -> dict[str, Any]:
        """Accuracy on the test split's fixed view (and the validation split's, when held out)."""
        row = {}
        if self.val_src is not None:  # against the teacher's predictions with teacher.label_val
            acc, agreement = self._accuracy(self.val_src, self.val_teacher_pred)
            row["val_acc"] = acc if agreement is None else agreement
        row["test_acc"], agreement = self._accuracy(self.test_src, self.test_teacher_pred)
        if agreement is not None:
            row["test_agreement"] = agreement
        return row

    def _accuracy(self, src: Source, teacher_pred: np.ndarray | None) -> tuple[float, float | None]:
        return accuracy(self.model, src, self.eval_replayer, self.policy, self.dist, self.device, self.memory_format,
                        self.precision.autocast, teacher_pred)

    # -- state and files ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(),
                **training_state(self.optimizer, self.scheduler, self.scaler)}

    def load_state_dict(self, state: dict[str, Any], origin: Path) -> None:
        try:
            load_state_strict(self.model, state["model"], str(origin))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        load_training_state(state, self.optimizer, self.scheduler, self.scaler)

    def close(self) -> None:
        if hasattr(self, "data"):  # prepare() may have stopped before the data existed
            self.data.close()

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        last, pred = history[-1], self.test_teacher_pred
        result: dict[str, Any] = {
            "role": self.role, "objective": self.objective.name, "model": self.cfg.model.name,
            "epochs": self.epochs, "test_acc": last["test_acc"], "test_agreement": last.get("test_agreement"),
            "train_samples": len(self.train_src), "test_samples": len(self.test_src),
            "images_per_s": float(np.mean([r["images_per_s"] for r in history])),
            "teacher_mode": self.teacher.mode if self.teacher else None,
            "teacher_test_acc": None if pred is None else float((pred == self.test_src.labels).mean()),
            "noise_rate": getattr(self.train_src, "noise_rate", None),
        }
        if self.val_src is not None:  # the selected epochs are added by the run loop (run_loop.epoch_selection)
            result["val_samples"] = len(self.val_src)
            result["val_labels"] = "teacher" if self.cfg.teacher.label_val else "ground_truth"
        if self.dist.is_main:
            m, spec = self.cfg.model, self.student_spec
            save_model(self.model, self.output, {
                "model": m.name, "kwargs": m.kwargs, "num_classes": self.train_src.num_classes,
                "in_chans": self.train_src.channels, "mean": list(spec.mean), "std": list(spec.std),
                "input_size": spec.size[0], "dataset": dataset_record(self.train_src)})
        return result


def run_splits(cfg: Config) -> Splits:
    """The run's splits (a scenario may select the training rows), with the batch sizes checked against them."""
    splits = load_run_splits(**dataclasses.asdict(cfg.data), run_seed=cfg.run.seed)
    kept = training_rows(cfg, splits.selection)  # a scenario's rows (Sel-CL+: a Sel-CL run's selection)
    if kept is not None:
        if splits.val is not None:
            raise RunError(f"the {kept[1]} scenario selects the training rows; set data.val_fraction to 0")
        splits = Splits(kept[0], kept[0], None, splits.test)
    train_src = splits.train
    side = max(*train_src.image_hw, cfg.model.input_size or 0)
    for key, batch, src in (("optim.batch_size", cfg.optim.batch_size, train_src),
                            ("optim.eval_batch_size", cfg.optim.eval_batch_size, splits.test)):
        check_batch(key, batch, train_src.channels, side, len(src))
    return splits


def run_objective(cfg: Config, role: str) -> Objective:
    """``objective`` built from its section; a teacher's run learns the ground truth alone."""
    ob = cfg.objective
    objective = build_objective(ob.name, **{k: v for k, v in dataclasses.asdict(ob).items() if k != "name"})
    if role == "teacher" and objective.needs_teacher:
        raise RunError(f"train-teacher learns the ground truth alone, but objective.name {ob.name!r} needs a teacher")
    return objective


def train(cfg: Config, role: str = "student", resume: bool = False, console: Console | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one training job (see :class:`Trainer`); returns the contents of ``result.json``.

    ``on_epoch`` sees every finished epoch's metrics row (an Optuna trial reports and prunes there).
    """
    trainer = Trainer(cfg, role, console)
    return RunLoop(trainer, resume, trainer.console, on_epoch).run()
