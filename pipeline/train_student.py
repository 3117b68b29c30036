"""Stage 2 as a task of the run loop: a student on replayed views with a cached (or online) teacher; also plain supervised runs.

``train(cfg, role="student")`` reads the teacher's logits for each sample's view of the epoch
from the store (``teacher.mode: store``) or computes them on the same replayed views
(``teacher.mode: online``). ``role="teacher"`` trains with ground truth only (the ``vanilla``
objective), which is how weak teachers and strong ceilings are made. :class:`Trainer` is the
:class:`pipeline.run_loop.Task`; the loop owns the run directory, checkpoints, resume and metric
files, and every epoch ends with an evaluation on the test split's fixed view.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.accuracy import accuracy, fixed_view_replayer, predictions
from pipeline.checkpoint import CheckpointError, load_state_strict, save_model, unwrap
from pipeline.config import Config, save_config
from pipeline.loader import ViewReplayer, crop_size_for, epoch_order, shard_batches, stream
from pipeline.mixing import batch_rng, draw, mix_images, mix_targets, mix_teacher_logits
from pipeline.objectives import Objective, build_objective
from pipeline.run_loop import Epoch, RunLoop, StepOut, Task
from pipeline.runtime import RunError, setup, stderr_console
from pipeline.sel_cl.selected import keep_selected
from pipeline.sources.registry import Splits, load_run_splits
from pipeline.specs import (dataset_record, fresh_views, input_spec, mix_config, student_augment, teacher_spec)
from pipeline.teacher import open_teacher
from pipeline.train_setup import AMP_MODES, build_model, build_optimizer
from pipeline.views import sample_params

METRIC_KEYS = ("epoch", "lr", "loss", "gt", "kd", "align", "weight_mean", "train_acc", "train_agreement",
               "val_acc", "test_acc", "test_agreement", "images_per_s", "epoch_s",
               "store_read_s")
WEIGHT_BIN_COUNT = 10  # histogram bins over an objective's ``weight_range`` (AdaptConf's beta: [0, 0.5])
EPOCH_LINE = (("loss", "loss {:.4f}"), ("train_acc", "train {:.4f}"), ("test_acc", "test {:.4f}"),
              ("weight_mean", "weight {:.3f}"), ("test_agreement", "agree {:.4f}"), ("images_per_s", "{:.0f} img/s"))
ParamsFn = Callable[[np.ndarray], np.ndarray]


class Trainer(Task):
    """One supervised or student run; see the module docstring.

    The benchmarks drive its public steps one by one: ``prepare()`` (data, teacher, model,
    optimizer, replayers), ``epoch_sources(e)`` (the epoch's view params and cached logits),
    ``make_train_replayer(e)`` and ``train_step(batch, e, s)`` (one optimizer step and its metrics).
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
        opt = build_optimizer(self.model, cfg.optim, self.dist.world, len(self.train_src))
        self.optimizer, self.scheduler = opt.optimizer, opt.scheduler
        self.global_batch, self.local_batch, self.steps_per_epoch = opt.global_batch, opt.local_batch, opt.steps_per_epoch
        self.student_spec = input_spec(self.train_src, cfg.model.mean, cfg.model.std, cfg.model.input_size)
        self.specs = [self.student_spec]
        if self.teacher and self.teacher.mode == "online":
            self.specs.append(teacher_spec(self.train_src, self.teacher.meta or {}))
        self.eval_replayer = fixed_view_replayer(self.test_src, self.student_spec, cfg.optim.eval_batch_size,
                                                 self.policy, cfg.run.device, cfg.run.num_threads)
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

    def save_config(self, directory: Path) -> None:
        save_config(self.cfg, directory / "config.yaml")

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def _rows(self, array: np.ndarray) -> np.ndarray:
        """A store array (over the whole training selection) restricted to this run's training part."""
        return array if self.store_rows is None else array[self.store_rows]

    def _fresh_views(self) -> bool:
        """Whether epochs draw new views; with a store that needs a view per epoch (``K >= epochs``)."""
        store = self.teacher.store if self.teacher else None
        try:
            fresh = fresh_views(self.cfg, reads_store=store is not None)
        except ValueError as exc:
            raise RunError(str(exc)) from exc
        if fresh and store is not None and self.policy.kind != "none" and self.policy.num_views < self.epochs:
            raise RunError(f"views.sampling is fresh but the store holds {self.policy.num_views} augmented views "
                           f"for {self.epochs} epochs; write a store with views.num_views >= {self.epochs} or use cycle")
        return fresh

    def _objective(self) -> Objective:
        ob = self.cfg.objective
        objective = build_objective(ob.name, **{k: v for k, v in dataclasses.asdict(ob).items() if k != "name"})
        if self.role == "teacher" and objective.needs_teacher:
            raise RunError(f"train-teacher learns the ground truth alone, but objective.name {ob.name!r} needs a teacher")
        return objective

    def make_train_replayer(self, epoch: int) -> ViewReplayer:
        """The training pipeline; with DALI-side augmentation it is rebuilt per epoch from (seed, epoch, rank)."""
        seed = int(np.random.default_rng([self.cfg.run.seed, epoch, self.dist.rank]).integers(2**31))
        return ViewReplayer(self.train_src.image_hw, self.specs, self.local_batch,
                            crop_size_for(self.policy, self.train_src), self.cfg.run.device, self.cfg.run.num_threads,
                            decode=self.train_src.encoded, augment=self.augment, seed=seed)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = AMP_MODES[self.cfg.run.amp]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    # -- an epoch ----------------------------------------------------------------------------
    def epoch_sources(self, epoch: int) -> tuple[ParamsFn, ParamsFn | None]:
        """Where this epoch's view params and teacher logits come from."""
        policy = self.policy.fresh(self.epochs) if self.fresh else self.policy
        view = policy.epoch_view(epoch, self.cfg.views.augmented)
        t = self.teacher
        if t is not None and t.mode == "store":
            assert t.store is not None
            logits_all, params_all = (self._rows(a) for a in t.store.read_view(view, verify=True))
            return (lambda idx: params_all[idx]), (lambda idx: logits_all[idx])
        src = self.train_src
        return (lambda idx: sample_params(policy, idx, view, src.sizes_of(idx))), None

    def epoch(self, epoch: int, start_step: int) -> Epoch:
        if epoch > 0 and self.augment.active:
            self.train_replayer = self.make_train_replayer(epoch)
        random.seed(hash((self.cfg.run.seed, epoch, self.dist.rank)))  # timm's RandomErasing draws from `random`
        start = time.perf_counter()
        params_of, logits_of = self.epoch_sources(epoch)
        self.read_s = time.perf_counter() - start
        order = epoch_order(len(self.train_src), epoch, self.cfg.run.seed, shuffle=True)
        batches = shard_batches(order, self.global_batch, self.dist.rank, self.dist.world, drop_last=True)
        self.model.train()
        if start_step and self.augment.active:  # DALI's random operators: replay the done batches to advance them
            for _ in stream(self.train_src, batches[:start_step], self.train_replayer, params_of, logits_of,
                            self.labels):
                pass
        return Epoch(len(batches), stream(self.train_src, batches[start_step:], self.train_replayer, params_of,
                                          logits_of, self.labels))

    def train_step(self, b: Any, epoch: int, step: int) -> StepOut:
        """One optimizer step, the per-update schedule, and the step's named metric sums."""
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

    def optimizer_step(self, b: Any, epoch: int, step: int) -> tuple[Any, Tensor, Tensor | None]:
        """Mix, teacher logits, forward, objective, backward, step: (objective output, student and teacher logits)."""
        cfg, t = self.cfg, self.teacher
        x = b.inputs[0].contiguous(memory_format=self.memory_format)
        x_t = b.inputs[1] if len(b.inputs) > 1 else None
        zt = b.teacher_logits
        target: Tensor = b.labels
        mix = draw(self.mix, batch_rng(cfg.run.seed, epoch, step)) if self.mix.active else None
        lam = 1.0
        # timm's RandomErasing erases each sample of a batch independently (python `random`, reseeded per
        # epoch, and the device's torch generator); before mixing as timm's per-sample transform does
        # (MAE), or after it as timm's train.py does with its prefetcher (augment.erase_before_mix).
        erase_first = self.erasing is not None and cfg.augment.erase_before_mix
        if erase_first:
            x = self.erasing(x)
        if mix is not None:
            x, lam = mix_images(x, mix)
            if x_t is not None:
                x_t, _ = mix_images(x_t, mix)
            elif zt is not None:
                zt = mix_teacher_logits(zt, lam, self.objective.kd_temperature)
        if mix is not None or self.mix.label_smoothing > 0:
            target = mix_targets(b.labels, self.train_src.num_classes, lam, self.mix.label_smoothing)
        correct_from = cfg.noisy.label_correction_from
        if correct_from is not None and epoch >= correct_from:
            target = self._corrected_target(b, lam if mix is not None else 1.0)
        if self.erasing is not None and not erase_first:
            x = self.erasing(x)
        if t is not None and t.mode == "online":
            assert t.model is not None and x_t is not None
            with torch.no_grad(), self._autocast():
                zt = t.model(x_t).float()
        with self._autocast():
            zs = self.net(x)
        out = self.objective(zs.float(), zt, target, epoch=epoch, epochs=self.epochs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out, zs, zt

    def _corrected_target(self, b: Any, lam: float) -> Tensor:
        """Sel-CL+'s bootstrapped target ``(1 - B) onehot(y) + B onehot(argmax f(x_clean))``, mixed as the images.

        ``f`` runs in training mode on the un-augmented view, without gradient (as upstream, so its
        batch-norm statistics move too).
        """
        assert self.clean_replayer is not None
        src, idx = self.train_src, b.indices
        sizes = src.sizes_of(idx)
        x = self.clean_replayer(src.read(idx), sample_params(self.policy, idx, 0, sizes), sizes if src.encoded else None)[0]
        with torch.no_grad(), self._autocast():
            pred = self.net(x.contiguous(memory_format=self.memory_format)).argmax(1)
        c, boot = src.num_classes, self.cfg.noisy.bootstrap
        y = (1 - boot) * F.one_hot(b.labels.long(), c).float() + boot * F.one_hot(pred, c).float()
        return y * lam + y.flip(0) * (1 - lam)

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
        if self.val_src is not None:
            best = max(history, key=lambda r: r["val_acc"])
            result.update(val_samples=len(self.val_src), best_epoch=int(best["epoch"]), best_val_acc=best["val_acc"],
                          test_acc_at_best=best["test_acc"])
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
