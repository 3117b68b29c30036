"""Stage 2 as a task of the run loop: a student on replayed views with a cached (or online) teacher; also plain supervised runs.

``train(cfg, role="student")`` reads the teacher's logits for each sample's view of the epoch
from the store (``teacher.mode: store``) or computes them on the same replayed views
(``teacher.mode: online``). ``role="teacher"`` trains with ground truth only (the ``vanilla``
objective), which is how weak teachers and strong ceilings are made. :class:`Trainer` is the
:class:`pipeline.engine.run_loop.Task`; the loop owns the run directory, checkpoints, resume and metric
files, and every epoch ends with an evaluation on the test split's fixed view.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from pipeline.student.accuracy import accuracy, fixed_view_replayer, predictions
from pipeline.engine.checkpoint import CheckpointError
from pipeline.models.files import load_state_strict, save_model, unwrap
from pipeline.config.schema import Config
from pipeline.scenarios.few_shot.ghost_bn import set_bn_batch
from pipeline.objectives import Objective, build_objective
from pipeline.engine.resource_checks import check_batch
from pipeline.engine.run_loop import RunLoop, StepOut, Task
from pipeline.engine.runtime import RunError, setup, stderr_console
from pipeline.scenarios.sel_cl.selected import keep_selected
from pipeline.data.sources.registry import Splits, load_run_splits
from pipeline.student.specs import dataset_record, input_spec, mix_config, student_augment, teacher_spec
from pipeline.student.data import StudentData
from pipeline.student.step import StudentStep
from pipeline.student.teacher import open_teacher
from pipeline.student.setup import build_model, build_optimizer

METRIC_KEYS = ("epoch", "lr", "loss", "gt", "kd", "align", "weight_mean", "train_acc", "train_agreement",
               "val_acc", "test_acc", "test_agreement", "images_per_s", "epoch_s",
               "store_read_s")
WEIGHT_BIN_COUNT = 10  # histogram bins over an objective's ``weight_range`` (AdaptConf's beta: [0, 0.5])
EPOCH_LINE = (("loss", "loss {:.4f}"), ("train_acc", "train {:.4f}"), ("test_acc", "test {:.4f}"),
              ("weight_mean", "weight {:.3f}"), ("test_agreement", "agree {:.4f}"), ("images_per_s", "{:.0f} img/s"))


class Trainer(StudentData, StudentStep, Task):
    """One supervised or student run; see the module docstring.

    The data side (order, views, store shard) is :class:`~pipeline.student.data.StudentData`, the
    step's maths :class:`~pipeline.student.step.StudentStep`. The benchmarks drive its public steps
    one by one: ``prepare()`` (data, teacher, model, optimizer, replayers), ``epoch_sources(e)``
    (the epoch's view params and cached logits), ``make_train_replayer(e)`` and
    ``train_step(batch, e, s)`` (one optimizer step and its metrics).
    """

    csv_keys = METRIC_KEYS
    epoch_line = EPOCH_LINE

    def __init__(self, cfg: Config, role: str, console: Console | None = None) -> None:
        self.cfg, self.role = cfg, role
        self.console = console or stderr_console()
        self.output, self.epochs = Path(cfg.run.output), cfg.optim.epochs
        self.checkpoint_every_steps, self.trackers = cfg.run.checkpoint_every_steps, cfg.run.log
        self.read_s = 0.0  # seconds the epoch's store read took

    # -- setup -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the data, the teacher (checking a store against the run), the model, optimizer and replayers."""
        cfg = self.cfg
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed, cfg.run.deterministic)
        splits = load_run_splits(**dataclasses.asdict(cfg.data), run_seed=cfg.run.seed)
        if cfg.noisy.selection:  # Sel-CL+: the confident examples of a Sel-CL run
            if splits.val is not None:
                raise RunError("noisy.selection keeps a Sel-CL run's examples; set data.val_fraction to 0")
            kept = keep_selected(splits.selection, cfg.noisy.selection)
            splits = Splits(kept, kept, None, splits.test)
        self.train_src, self.val_src, self.test_src = splits.train, splits.val, splits.test
        side = max(*self.train_src.image_hw, cfg.model.input_size or 0)
        for key, batch, src in (("optim.batch_size", cfg.optim.batch_size, self.train_src),
                                ("optim.eval_batch_size", cfg.optim.eval_batch_size, self.test_src)):
            check_batch(key, batch, self.train_src.channels, side, len(src))
        self.store_rows = splits.train_rows  # the training part's rows in a store (None: all rows)
        self.objective = self._objective()
        self.mix, self.augment = mix_config(cfg), student_augment(cfg)
        self.teacher, self.policy = open_teacher(cfg, self.objective, splits.selection, self.device)
        self.fresh = self._fresh_views()
        noise = getattr(self.train_src, "noise_rate", None)
        if noise is not None and self.dist.is_main:
            self.console.print(f"label noise {cfg.data.noise_mode} at rate {cfg.data.noise_rate}: "
                               f"{100 * noise:.2f}% of the training labels differ from the clean ones")
        self.labels = self.train_src.labels
        if self.teacher and self.teacher.store is not None:
            self.labels = self._rows(self.teacher.store.labels())  # the labels the teacher saw (e.g. noisy)
        placed = build_model(cfg.model, cfg.run, self.train_src.num_classes, self.train_src.channels, self.device,
                             self.dist, self.console)
        self.model, self.net, self.memory_format, self.scaler = (placed.model, placed.net, placed.memory_format,
                                                                 placed.scaler)
        set_bn_batch(self.model, cfg.model.bn_batch, "model.bn_batch")  # per-GPU BN of DataParallel (ghost_bn)
        opt = build_optimizer(self.model, cfg.optim, self.dist.world, len(self.train_src))
        self.optimizer, self.scheduler = opt.optimizer, opt.scheduler
        self.global_batch, self.local_batch, self.steps_per_epoch = opt.global_batch, opt.local_batch, opt.steps_per_epoch
        self.student_spec = input_spec(self.train_src, cfg.model.mean, cfg.model.std, cfg.model.input_size)
        self.specs = [self.student_spec]
        if self.teacher and self.teacher.mode == "online":
            self.specs.append(teacher_spec(self.train_src, self.teacher.meta or {}))
        self.eval_replayer = fixed_view_replayer(self.test_src, self.student_spec, cfg.optim.eval_batch_size,
                                                 self.policy, cfg.run.device, cfg.run.num_threads)
        self.shard_reader = self._shard_reader()
        self.train_replayer = self.make_train_replayer(0)
        self.erasing = None
        if cfg.augment.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(cfg.augment.random_erasing, mode="pixel", device=str(self.device))
        self.clean_replayer = None  # label correction's un-augmented view of each training batch
        if cfg.noisy.label_correction_from is not None:
            self.clean_replayer = fixed_view_replayer(self.train_src, self.student_spec, self.local_batch,
                                                      self.policy, cfg.run.device, cfg.run.num_threads)
        self.test_teacher_pred = None
        if self.teacher and self.teacher.model is not None:  # for agreement and the teacher's own accuracy
            rep = fixed_view_replayer(self.test_src, teacher_spec(self.test_src, self.teacher.meta or {}),
                                      cfg.optim.eval_batch_size, self.policy, cfg.run.device, cfg.run.num_threads)
            self.test_teacher_pred = predictions(self.teacher.model, self.test_src, rep, self.policy)

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def _objective(self) -> Objective:
        ob = self.cfg.objective
        objective = build_objective(ob.name, **{k: v for k, v in dataclasses.asdict(ob).items() if k != "name"})
        if self.role == "teacher" and objective.needs_teacher:
            raise RunError(f"train-teacher learns the ground truth alone, but objective.name {ob.name!r} needs a teacher")
        return objective

    # -- an epoch ----------------------------------------------------------------------------
    def train_step(self, b: Any, epoch: int, step: int) -> StepOut:
        """One optimizer step, the schedule's update (when stepped per update), and the step's named metric sums."""
        out, zs, zt = self.optimizer_step(b, epoch, step)
        self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
        loss = out.total.item()  # the metrics below sync every step anyway
        n = len(b.indices)
        pred = zs.detach().argmax(1)
        metrics: dict[str, tuple[Any, float]] = {"loss": (loss * n, n), "train_acc": ((pred == b.labels).sum().item(), n)}
        for name, term in out.terms.items():
            metrics[name] = (term.item() * n, n)
        if zt is not None:
            metrics["train_agreement"] = ((pred == zt.argmax(1)).sum().item(), n)
        if out.sample_weight is not None:
            metrics["weight_mean"] = (out.sample_weight.sum().item(), n)
            if self.objective.weight_range is not None:
                bins = np.linspace(*self.objective.weight_range, WEIGHT_BIN_COUNT + 1)
                counts = np.histogram(out.sample_weight.detach().float().cpu().numpy(), bins=bins)[0]
                metrics["weight_hist"] = (counts.astype(np.float64), n)
        return StepOut(loss, metrics)

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
            row["store_read_s"] = self.read_s
        for key in ("weight_mean", "weight_hist"):
            if key in means:
                row[key] = means[key]
        return row

    def evaluate(self) -> dict[str, Any]:
        """Accuracy on the test split's fixed view (and the validation split's, when held out)."""
        row = {}
        if self.val_src is not None:
            row["val_acc"] = self._accuracy(self.val_src, None)[0]
        row["test_acc"], agreement = self._accuracy(self.test_src, self.test_teacher_pred)
        if agreement is not None:
            row["test_agreement"] = agreement
        return row

    def _accuracy(self, src: Any, teacher_pred: np.ndarray | None) -> tuple[float, float | None]:
        return accuracy(self.model, src, self.eval_replayer, self.policy, self.dist, self.device, self.memory_format,
                        self._autocast, teacher_pred)

    # -- state and files ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any], origin: Path) -> None:
        try:
            load_state_strict(self.model, state["model"], str(origin))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])

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
        if self.dist.is_main:
            m, spec = self.cfg.model, self.student_spec
            save_model(self.model, self.output, {
                "model": m.name, "kwargs": m.kwargs, "num_classes": self.train_src.num_classes,
                "in_chans": self.train_src.channels, "mean": list(spec.mean), "std": list(spec.std),
                "input_size": spec.size[0], "dataset": dataset_record(self.train_src)})
        return result


def train(cfg: Config, role: str = "student", resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run one training job (see :class:`Trainer`); returns the contents of ``result.json``."""
    trainer = Trainer(cfg, role, console)
    return RunLoop(trainer, resume, trainer.console).run()
