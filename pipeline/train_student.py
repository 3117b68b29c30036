"""Stage 2: train a model on replayed views with a cached (or online) teacher; also plain supervised runs.

``train(cfg, role="student")`` reads the teacher's logits for each sample's view of the epoch
from the store (``teacher.mode: store``) or computes them on the same replayed views
(``teacher.mode: online``). ``role="teacher"`` trains with ground truth only (the ``vanilla``
objective), which is how weak teachers and strong ceilings are made. Every epoch ends with an
evaluation on the test split's fixed view, a metrics row and an atomic checkpoint, so
``resume=True`` continues an interrupted run to the same result.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.checkpoint import (CheckpointError, load_model, load_state, load_state_strict, save_model,
                                 save_state, unwrap, write_json)
from pipeline.config import Config, save_config
from pipeline.loader import OutputSpec, ViewReplayer, crop_size_for, epoch_order, shard_batches, stream
from pipeline.models import create
from pipeline.objectives import Objective, build_objective
from pipeline.runtime import Dist, RunError, RunLock, all_reduce_sum, setup
from pipeline.sources.base import ArraySource
from pipeline.sources.registry import train_and_test
from pipeline.views import ViewPolicy, sample_params
from store.soft_label_store import SoftLabelStore, StoreError

METRIC_KEYS = ("epoch", "lr", "loss", "gt", "kd", "align", "weight_mean", "train_acc", "train_agreement",
               "test_acc", "test_agreement", "images_per_s", "epoch_s")
TEACHER_MODES = ("store", "online")


def view_policy(cfg: Config) -> ViewPolicy:
    v = cfg.views
    return ViewPolicy(v.kind, v.num_views, v.pad, v.flip, tuple(v.scale), tuple(v.ratio), v.crop_pct, v.seed)


def dataset_record(source: ArraySource) -> dict[str, Any]:
    """What a store records about the data it was computed on (compared by train-student)."""
    return {"source": source.name, "split": source.split, "num_samples": len(source),
            "fingerprint": source.fingerprint()}


def input_spec(source: ArraySource, mean: Any, std: Any, size: Any) -> OutputSpec:
    """(size, mean, std) for a model: its own values where given, else the dataset's."""
    hw = (int(size), int(size)) if size else source.image_hw
    return hw, tuple(mean or source.mean), tuple(std or source.std)


def teacher_spec(source: ArraySource, meta: dict[str, Any]) -> OutputSpec:
    """The teacher's own normalization and input size, as recorded in its model.json."""
    return input_spec(source, meta.get("mean"), meta.get("std"), meta.get("input_size"))


@dataclass
class Teacher:
    """The teacher as stage 2 sees it: a complete store, a model, or both (store + agreement)."""

    mode: str
    store: SoftLabelStore | None = None
    model: nn.Module | None = None
    meta: dict[str, Any] | None = None
    sha256: str | None = None


def open_teacher(cfg: Config, objective: Objective, train_src: ArraySource, policy: ViewPolicy,
                 device: torch.device) -> Teacher | None:
    """Load what the objective needs and check that a store matches this run's data and views."""
    if not objective.needs_teacher:
        return None
    mode = cfg.teacher.mode
    if mode not in TEACHER_MODES:
        raise RunError(f"teacher.mode must be one of {', '.join(TEACHER_MODES)}, got {mode!r}")
    t = Teacher(mode)
    if cfg.teacher.checkpoint:
        model, t.meta, t.sha256 = load_model(cfg.teacher.checkpoint)
        t.model = model.to(device)
    elif mode == "online":
        raise RunError("teacher.mode is online but teacher.checkpoint is not set")
    if mode == "store":
        if not cfg.teacher.store:
            raise RunError("teacher.store is not set; run `w2s infer-teacher` and point teacher.store at its output")
        t.store = SoftLabelStore.open(cfg.teacher.store)
        expected: dict[str, Any] = {"dataset": dataset_record(train_src), "view_policy": policy.describe()}
        if t.sha256:
            expected["teacher"] = {"sha256": t.sha256}
        t.store.check_matches(expected)
        if t.store.num_classes != train_src.num_classes:
            raise StoreError(f"store has {t.store.num_classes} classes but {train_src.name} has {train_src.num_classes}")
    return t


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


class Trainer:
    """One training run; see the module docstring."""

    def __init__(self, cfg: Config, role: str, resume: bool, console: Console | None = None) -> None:
        self.cfg, self.role, self.resume = cfg, role, resume
        self.console = console or Console(stderr=True)
        self.out = Path(cfg.run.output)

    def run(self) -> dict[str, Any]:
        with RunLock(self.out):
            return self._run()

    # -- setup -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg = self.cfg
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed)
        self.train_src, self.test_src = train_and_test(cfg.data)
        ob = cfg.objective
        name = "vanilla" if self.role == "teacher" else ob.name
        if self.role == "teacher" and ob.name != "vanilla":
            raise RunError(f"train-teacher uses the vanilla objective, but objective.name is {ob.name!r}")
        self.objective = build_objective(name, kd_temperature=ob.kd_temperature, threshold=ob.threshold,
                                         gt_weight=ob.gt_weight, kd_weight=ob.kd_weight, rate=ob.rate,
                                         max_weight=ob.max_weight, warmup_rate=ob.warmup_rate)
        self.policy = view_policy(cfg)
        self.teacher = open_teacher(cfg, self.objective, self.train_src, self.policy, self.device)
        self.labels = self.train_src.labels
        if self.teacher and self.teacher.store is not None:
            self.labels = self.teacher.store.labels()  # the labels the teacher saw (e.g. noisy)
        m = cfg.model
        torch.manual_seed(cfg.run.seed)
        model = create(m.name, self.train_src.num_classes, self.train_src.channels, **m.kwargs)
        if m.init_checkpoint:
            from safetensors.torch import load_file

            load_state_strict(model, load_file(m.init_checkpoint), m.init_checkpoint)
        self.model = model.to(self.device)
        self.ddp: nn.Module = self.model
        if self.dist.world > 1:
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.student_spec = input_spec(self.train_src, m.mean, m.std, m.input_size)
        o = cfg.optim
        if o.batch_size % self.dist.world:
            raise RunError(f"optim.batch_size {o.batch_size} is not divisible by the {self.dist.world} processes")
        self.local_batch = o.batch_size // self.dist.world
        self.steps_per_epoch = len(self.train_src) // o.batch_size
        if self.steps_per_epoch == 0:
            raise RunError(f"{len(self.train_src)} training samples are fewer than one batch of {o.batch_size}")
        opt_name = o.name
        if o.name == "sgd":
            opt_name = "sgd" if o.nesterov else "momentum"
        kwargs: dict[str, Any] = {"momentum": o.momentum} if o.name == "sgd" else {}
        self.optimizer = create_optimizer_v2(self.model, opt=opt_name, lr=o.lr, weight_decay=o.weight_decay, **kwargs)
        total = o.epochs * self.steps_per_epoch
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=total, lr_min=o.min_lr,
                                           warmup_t=int(o.warmup_epochs * self.steps_per_epoch),
                                           warmup_lr_init=o.lr * 1e-3 if o.warmup_epochs else 0.0,
                                           warmup_prefix=True, t_in_epochs=False)
        hw = self.train_src.image_hw
        crop = crop_size_for(self.policy, hw)
        specs = [self.student_spec]
        if self.teacher and self.teacher.mode == "online":
            specs.append(teacher_spec(self.train_src, self.teacher.meta or {}))
        nt = self.cfg.run.num_threads
        self.train_replayer = ViewReplayer(hw, specs, self.local_batch, crop, cfg.run.device, nt)
        self.eval_replayer = ViewReplayer(hw, [self.student_spec], o.eval_batch_size, crop, cfg.run.device, nt)
        self.test_teacher_pred = self._teacher_test_predictions()

    def _teacher_test_predictions(self) -> np.ndarray | None:
        """The teacher's argmax on the test split's fixed view (for student-teacher agreement)."""
        if not self.teacher or self.teacher.model is None:
            return None
        spec = teacher_spec(self.test_src, self.teacher.meta or {})
        rep = ViewReplayer(self.test_src.image_hw, [spec], self.cfg.optim.eval_batch_size,
                           crop_size_for(self.policy, self.test_src.image_hw), self.cfg.run.device,
                           self.cfg.run.num_threads)
        preds = np.empty(len(self.test_src), dtype=np.int64)
        idx_all = np.arange(len(self.test_src))
        fixed = lambda idx: sample_params(self.policy, idx, 0, self.test_src.image_hw)  # noqa: E731
        with torch.no_grad():
            for b in stream(self.test_src, np.array_split(idx_all, math.ceil(len(idx_all) / rep.batch_size)), rep, fixed):
                preds[b.indices] = self.teacher.model(b.inputs[0]).argmax(1).cpu().numpy()
        return preds

    # -- loop --------------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        self._prepare()
        start_epoch, history = self._restore()
        if self.dist.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        epochs = self.cfg.optim.epochs
        for epoch in range(start_epoch, epochs):
            row = self._train_epoch(epoch)
            row.update(self._evaluate())
            history.append(row)
            if self.dist.is_main:
                self._write_metrics(history)
                self._checkpoint(epoch, history)
                self.console.print(_epoch_line(row, epochs))
        return self._finish(history)

    def _batches(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(len(self.train_src), epoch, self.cfg.run.seed, shuffle=True)
        return shard_batches(order, self.cfg.optim.batch_size, self.dist.rank, self.dist.world, drop_last=True)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, t = self.cfg, self.teacher
        view = self.policy.epoch_view(epoch, cfg.views.augment)
        hw = self.train_src.image_hw
        logits_of: Callable[[np.ndarray], np.ndarray] | None = None
        if t is not None and t.mode == "store":
            assert t.store is not None
            logits_all, params_all = t.store.read_view(view)
            params_of: Callable[[np.ndarray], np.ndarray] = lambda idx: params_all[idx]  # noqa: E731
            logits_of = lambda idx: logits_all[idx]  # noqa: E731
        else:
            params_of = lambda idx: sample_params(self.policy, idx, view, hw)  # noqa: E731
        self.model.train()
        sums = np.zeros(9)  # loss gt kd align weight correct agree n steps
        batches = self._batches(epoch)
        start = time.perf_counter()
        num_updates = epoch * self.steps_per_epoch
        with _progress(self.console) as bar:
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.optim.epochs}", total=len(batches))
            for b in stream(self.train_src, batches, self.train_replayer, params_of, logits_of, self.labels):
                zt = b.teacher_logits
                if t is not None and t.mode == "online":
                    with torch.no_grad():
                        zt = t.model(b.inputs[1])  # type: ignore[misc]
                zs = self.ddp(b.inputs[0])
                out = self.objective(zs, zt, b.labels, epoch=epoch, epochs=cfg.optim.epochs)
                self.optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                self.optimizer.step()
                num_updates += 1
                self.scheduler.step_update(num_updates)
                n = len(b.indices)
                pred = zs.detach().argmax(1)
                sums += [out.total.item() * n, out.terms["gt"].item() * n, out.terms.get("kd", torch.tensor(0.)).item() * n,
                         out.terms.get("align", torch.tensor(0.)).item() * n,
                         0.0 if out.sample_weight is None else out.sample_weight.sum().item(),
                         (pred == b.labels).sum().item(),
                         0.0 if zt is None else (pred == zt.argmax(1)).sum().item(), n, 1]
                bar.advance(task)
        elapsed = time.perf_counter() - start
        s = all_reduce_sum(sums.tolist(), self.device, self.dist)
        n = s[7]
        row: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": s[0] / n,
                                 "gt": s[1] / n, "train_acc": s[5] / n, "images_per_s": n / elapsed, "epoch_s": elapsed}
        if t is not None:
            row.update(kd=s[2] / n, align=s[3] / n, train_agreement=s[6] / n)
        if self.objective.name in ("augconf", "adaptconf"):
            row["weight_mean"] = s[4] / n
        return row

    def _evaluate(self) -> dict[str, float]:
        """Accuracy on the test split's fixed view (and agreement with the teacher's test predictions)."""
        src = self.test_src
        order = np.arange(len(src))
        eb = self.cfg.optim.eval_batch_size
        batches = shard_batches(order, eb * self.dist.world, self.dist.rank, self.dist.world, drop_last=False)
        fixed = lambda idx: sample_params(self.policy, idx, 0, src.image_hw)  # noqa: E731
        self.model.eval()
        correct = agree = count = 0.0
        with torch.no_grad():
            for b in stream(src, batches, self.eval_replayer, fixed):
                pred = self.model(b.inputs[0]).argmax(1)
                correct += (pred == b.labels).sum().item()
                if self.test_teacher_pred is not None:
                    agree += (pred.cpu().numpy() == self.test_teacher_pred[b.indices]).sum()
                count += len(b.indices)
        correct, agree, count = all_reduce_sum([correct, float(agree), count], self.device, self.dist)
        row = {"test_acc": correct / count}
        if self.test_teacher_pred is not None:
            row["test_agreement"] = agree / count
        return row

    # -- files -------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        m = self.cfg.model
        size, mean, std = self.student_spec
        return {"model": m.name, "kwargs": m.kwargs, "num_classes": self.train_src.num_classes,
                "in_chans": self.train_src.channels, "mean": list(mean), "std": list(std), "input_size": size[0],
                "dataset": dataset_record(self.train_src)}

    def _restore(self) -> tuple[int, list[dict[str, float]]]:
        state_path = self.out / "checkpoints" / "state.pt"
        if (self.out / "result.json").exists() and not self.resume:
            raise RunError(f"{self.out} already holds a finished run; choose another run.output")
        if not state_path.exists():
            if self.resume and self.dist.is_main:
                self.console.print(f"no checkpoint in {self.out}; starting from scratch")
            return 0, []
        if not self.resume:
            raise RunError(f"{self.out} holds an unfinished run; pass --resume to continue it or choose another run.output")
        state = load_state(state_path)
        try:
            load_state_strict(self.model, state["model"], str(state_path))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        history = json.loads(state["history"])
        if self.dist.is_main:
            self.console.print(f"resuming {self.out} after epoch {state['epoch'] + 1}")
        return int(state["epoch"]) + 1, history

    def _checkpoint(self, epoch: int, history: list[dict[str, float]]) -> None:
        save_state(self.out / "checkpoints" / "state.pt", {
            "epoch": epoch, "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": json.dumps(history)})

    def _write_metrics(self, history: list[dict[str, float]]) -> None:
        keys = [k for k in METRIC_KEYS if any(k in r for r in history)]
        lines = "".join(json.dumps(r) + "\n" for r in history)
        from pipeline.checkpoint import atomic_write

        atomic_write(self.out / "metrics.jsonl", lambda p: Path(p).write_text(lines))

        def write_csv(p: str) -> None:
            with open(p, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                w.writerows(history)

        atomic_write(self.out / "metrics.csv", write_csv)

    def _finish(self, history: list[dict[str, float]]) -> dict[str, Any]:
        last = history[-1]
        result: dict[str, Any] = {
            "role": self.role, "objective": self.objective.name, "model": self.cfg.model.name,
            "epochs": self.cfg.optim.epochs, "test_acc": last["test_acc"],
            "test_agreement": last.get("test_agreement"), "train_samples": len(self.train_src),
            "test_samples": len(self.test_src), "images_per_s": float(np.mean([r["images_per_s"] for r in history])),
            "teacher_mode": self.teacher.mode if self.teacher else None,
        }
        if self.dist.is_main:
            save_model(self.model, self.out, self._meta())
            write_json(self.out / "result.json", result)
        return result


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(row['epoch']) + 1}/{epochs}", f"loss {row['loss']:.4f}", f"train {row['train_acc']:.4f}",
             f"test {row['test_acc']:.4f}"]
    if "weight_mean" in row:
        parts.append(f"weight {row['weight_mean']:.3f}")
    if "test_agreement" in row:
        parts.append(f"agree {row['test_agreement']:.4f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)


def train(cfg: Config, role: str = "student", resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run one training job (see :class:`Trainer`); returns the contents of ``result.json``."""
    return Trainer(cfg, role, resume, console).run()
