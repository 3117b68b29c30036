"""Stage 2: train a model on replayed views with a cached (or online) teacher; also plain supervised runs.

``train(cfg, role="student")`` reads the teacher's logits for each sample's view of the epoch
from the store (``teacher.mode: store``) or computes them on the same replayed views
(``teacher.mode: online``). ``role="teacher"`` trains with ground truth only (the ``vanilla``
objective), which is how weak teachers and strong ceilings are made. Every epoch ends with an
evaluation on the test split's fixed view, a metrics row and an atomic checkpoint, so
``resume=True`` continues an interrupted run to the same result.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.checkpoint import CheckpointError, load_state, load_state_strict, save_model, save_state, unwrap
from pipeline.config import Config, save_config
from pipeline.loader import ViewReplayer, crop_size_for, epoch_order, shard_batches, stream
from pipeline.mixing import batch_rng, draw, mix_images, mix_targets, mix_teacher_logits
from pipeline.models import create
from pipeline.nonfinite import SkippedSteps, check_step, check_weights
from pipeline.objectives import Objective, build_objective
from pipeline.pretrained import load_teacher
from pipeline.run_dir import RunDir, epoch_line
from pipeline.runtime import RunError, all_reduce_sum, main_lock, setup
from pipeline.sources.base import Source
from pipeline.sources.registry import load_run_splits
from pipeline.specs import (dataset_record, fresh_views, input_spec, mix_config, student_augment, teacher_spec,
                            view_policy)
from pipeline.views import ViewPolicy, sample_params
from store.soft_label_store import SoftLabelStore, StoreError

METRIC_KEYS = ("epoch", "lr", "loss", "gt", "kd", "align", "weight_mean", "train_acc", "train_agreement",
               "val_acc", "test_acc", "test_agreement", "images_per_s", "epoch_s",
               "store_read_s")
WEIGHT_BIN_COUNT = 10  # histogram bins over an objective's ``weight_range`` (AdaptConf's beta: [0, 0.5])
TEACHER_MODES = ("store", "online")
AMP_MODES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Teacher:
    """The teacher as stage 2 sees it: a complete store, a model, or both (store + agreement)."""

    mode: str
    store: SoftLabelStore | None = None
    model: nn.Module | None = None
    meta: dict[str, Any] | None = None
    sha256: str | None = None


def open_teacher(cfg: Config, objective: Objective, train_src: Source,
                 device: torch.device) -> tuple[Teacher | None, ViewPolicy]:
    """Load what the objective needs and the run's view policy; check that a store matches both.

    ``train_src`` is the training selection a store covers (before any validation hold-out). A run
    that replays a store takes the store's view seed unless ``views.seed`` pins one.
    """
    if not objective.needs_teacher:
        return None, view_policy(cfg)
    mode = cfg.teacher.mode
    if mode not in TEACHER_MODES:
        raise RunError(f"teacher.mode must be one of {', '.join(TEACHER_MODES)}, got {mode!r}")
    t = Teacher(mode)
    if cfg.teacher.checkpoint:
        model, t.meta, t.sha256 = load_teacher(cfg.teacher.checkpoint, cfg.teacher.model, train_src.num_classes,
                                               train_src.channels)
        t.model = model.to(device)
    elif mode == "online":
        raise RunError("teacher.mode is online but teacher.checkpoint is not set")
    if mode == "store":
        if not cfg.teacher.store:
            raise RunError("teacher.store is not set; run `w2s infer-teacher` and point teacher.store at its output")
        t.store = SoftLabelStore.open(cfg.teacher.store)
        policy = view_policy(cfg, seed=t.store.attrs.get("view_policy", {}).get("seed"))
        expected: dict[str, Any] = {"dataset": dataset_record(train_src), "view_policy": policy.describe()}
        if t.sha256:
            expected["teacher"] = {"sha256": t.sha256}
        t.store.check_matches(expected)
        if t.store.num_classes != train_src.num_classes:
            raise StoreError(f"store has {t.store.num_classes} classes but {train_src.name} has {train_src.num_classes}")
        return t, policy
    return t, view_policy(cfg)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


class Trainer:
    """One training run; see the module docstring.

    ``run()`` composes the public steps, which the benchmarks also drive one by one: ``prepare()``
    (data, teacher, model, optimizer, replayers), ``epoch_sources(e)`` (the epoch's view params and
    cached logits), ``make_train_replayer(e)``, ``train_step(batch, e, s)`` (one optimizer step) and
    ``train_epoch(e)`` (an epoch's steps and its metrics row).
    """

    def __init__(self, cfg: Config, role: str, resume: bool, console: Console | None = None) -> None:
        self.cfg, self.role, self.resume = cfg, role, resume
        self.console = console or Console(stderr=True)
        self.out = Path(cfg.run.output)
        self.run_dir = RunDir(self.out, resume, self.console)
        self.skipped: SkippedSteps | None = None  # fp16 steps skipped in a row (pipeline.nonfinite)
        self.partial: dict[str, Any] | None = None  # where a step checkpoint left the epoch it interrupted

    def run(self) -> dict[str, Any]:
        with main_lock(self.out):
            return self._run()

    # -- setup -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the data, the teacher (checking a store against the run), the model, optimizer and replayers."""
        cfg = self.cfg
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed, cfg.run.deterministic)
        self.run_dir.is_main = self.dist.is_main
        splits = load_run_splits(**dataclasses.asdict(cfg.data), run_seed=cfg.run.seed)
        self.train_src, self.val_src, self.test_src = splits.train, splits.val, splits.test
        self.store_rows = splits.train_rows  # the training part's rows in a store (None: all rows)
        self.objective = self._objective()
        self.mix = mix_config(cfg)
        self.augment = student_augment(cfg)
        self.teacher, self.policy = open_teacher(cfg, self.objective, splits.selection, self.device)
        self.fresh = self._fresh_views()
        noise = getattr(self.train_src, "noise_rate", None)
        if noise is not None and self.dist.is_main:
            self.console.print(f"label noise {cfg.data.noise_mode} at rate {cfg.data.noise_rate}: "
                               f"{100 * noise:.2f}% of the training labels differ from the clean ones")
        self.labels = self.train_src.labels
        if self.teacher and self.teacher.store is not None:
            self.labels = self._rows(self.teacher.store.labels())  # the labels the teacher saw (e.g. noisy)
        self._build_model()
        self._build_optimizer()
        self.student_spec = input_spec(self.train_src, cfg.model.mean, cfg.model.std, cfg.model.input_size)
        self.specs = [self.student_spec]
        if self.teacher and self.teacher.mode == "online":
            self.specs.append(teacher_spec(self.train_src, self.teacher.meta or {}))
        self.eval_replayer = ViewReplayer(self.test_src.image_hw, [self.student_spec], cfg.optim.eval_batch_size,
                                          crop_size_for(self.policy, self.test_src), cfg.run.device,
                                          cfg.run.num_threads, decode=self.test_src.encoded)
        self.train_replayer = self.make_train_replayer(0)
        self.erasing = None
        if cfg.augment.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(cfg.augment.random_erasing, mode="pixel", device=str(self.device))
        self.test_teacher_pred = self._teacher_test_predictions()

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
        epochs = self.cfg.optim.epochs
        if fresh and store is not None and self.policy.kind != "none" and self.policy.num_views < epochs:
            raise RunError(f"views.sampling is fresh but the store holds {self.policy.num_views} augmented views "
                           f"for {epochs} epochs; write a store with views.num_views >= {epochs} or use cycle")
        return fresh

    def _objective(self) -> Objective:
        ob = self.cfg.objective
        params = {k: v for k, v in dataclasses.asdict(ob).items() if k != "name"}
        objective = build_objective(ob.name, **params)
        if self.role == "teacher" and objective.needs_teacher:
            raise RunError(f"train-teacher learns the ground truth alone, but objective.name {ob.name!r} needs a teacher")
        return objective

    def _build_model(self) -> None:
        cfg, m = self.cfg, self.cfg.model
        torch.manual_seed(cfg.run.seed)
        model = create(m.name, self.train_src.num_classes, self.train_src.channels, **m.kwargs)
        if m.pretrained:
            from pipeline.pretrained import load_pretrained

            report = load_pretrained(model, m.pretrained, kind=m.pretrained_kind, reset_head=m.pretrained_reset_head)
            if self.dist.is_main:
                self.console.print(f"loaded {m.pretrained} ({report.kind}): {len(report.missing)} kept as initialized, "
                                   f"{len(report.unexpected)} dropped, {len(report.reset)} re-initialized, "
                                   f"{len(report.resized)} resampled")
        if cfg.run.amp not in AMP_MODES:
            raise RunError(f"run.amp must be one of {', '.join(AMP_MODES)}, got {cfg.run.amp!r}")
        if cfg.run.amp == "fp16" and self.device.type != "cuda":
            raise RunError("run.amp=fp16 needs a CUDA device; use bf16 on CPU")
        self.memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        net: nn.Module = self.model
        if self.dist.world > 1:
            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.run.compile:
            net = torch.compile(net, backend=cfg.run.compile_backend)  # type: ignore[assignment]
        self.net = net
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.run.amp == "fp16")

    def _build_optimizer(self) -> None:
        o = self.cfg.optim
        self.global_batch = o.batch_per_process * self.dist.world if o.batch_per_process else o.batch_size
        scale = self.global_batch / o.batch_size  # linear scaling rule (1 when the recipe's batch is kept)
        if self.global_batch % self.dist.world:
            raise RunError(f"global batch {self.global_batch} is not divisible by the {self.dist.world} processes")
        self.local_batch = self.global_batch // self.dist.world
        self.steps_per_epoch = len(self.train_src) // self.global_batch
        if self.steps_per_epoch == 0:
            raise RunError(f"{len(self.train_src)} training samples are fewer than one batch of {self.global_batch}")
        opt_name = ("sgd" if o.nesterov else "momentum") if o.name == "sgd" else o.name
        kwargs: dict[str, Any] = {"momentum": o.momentum} if o.name == "sgd" else {}
        if o.layer_decay > 0:
            kwargs["layer_decay"] = o.layer_decay
        self.optimizer = create_optimizer_v2(self.model, opt=opt_name, lr=o.lr * scale, weight_decay=o.weight_decay,
                                             **kwargs)
        warmup = dict(warmup_t=int(o.warmup_epochs * self.steps_per_epoch),
                      warmup_lr_init=o.lr * scale * 1e-3 if o.warmup_epochs else 0.0, warmup_prefix=True,
                      t_in_epochs=False)
        if o.schedule == "cosine":
            self.scheduler = CosineLRScheduler(self.optimizer, t_initial=o.epochs * self.steps_per_epoch,
                                               lr_min=o.min_lr * scale, **warmup)
        elif o.schedule == "multistep":
            self.scheduler = MultiStepLRScheduler(self.optimizer, decay_rate=o.decay_rate, **warmup,
                                                  decay_t=[int(m * self.steps_per_epoch) for m in o.milestones])
        else:
            raise RunError(f"optim.schedule must be cosine or multistep, got {o.schedule!r}")

    def make_train_replayer(self, epoch: int) -> ViewReplayer:
        """The training pipeline; with DALI-side augmentation it is rebuilt per epoch from (seed, epoch, rank)."""
        seed = int(np.random.default_rng([self.cfg.run.seed, epoch, self.dist.rank]).integers(2**31))
        return ViewReplayer(self.train_src.image_hw, self.specs, self.local_batch,
                            crop_size_for(self.policy, self.train_src), self.cfg.run.device, self.cfg.run.num_threads,
                            decode=self.train_src.encoded, augment=self.augment, seed=seed)

    def _teacher_test_predictions(self) -> np.ndarray | None:
        """The teacher's argmax on the test split's fixed view (for agreement and its own accuracy)."""
        if not self.teacher or self.teacher.model is None:
            return None
        src = self.test_src
        rep = ViewReplayer(src.image_hw, [teacher_spec(src, self.teacher.meta or {})], self.cfg.optim.eval_batch_size,
                           crop_size_for(self.policy, src), self.cfg.run.device, self.cfg.run.num_threads,
                           decode=src.encoded)
        preds = np.empty(len(src), dtype=np.int64)
        with torch.no_grad():
            for b in self._eval_stream(src, rep, world=1, rank=0):
                preds[b.indices] = self.teacher.model(b.inputs[0]).argmax(1).cpu().numpy()
        return preds

    def _eval_stream(self, src: Source, rep: ViewReplayer, world: int, rank: int) -> Iterator[Any]:
        batches = shard_batches(np.arange(len(src)), rep.batch_size * world, rank, world, drop_last=False)
        return stream(src, batches, rep, lambda idx: sample_params(self.policy, idx, 0, src.sizes_of(idx)))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = AMP_MODES[self.cfg.run.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # -- loop --------------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        self.prepare()
        start_epoch, history = self._restore()
        if self.dist.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        epochs = self.cfg.optim.epochs
        for epoch in range(start_epoch, epochs):
            row = self.train_epoch(epoch)  # stops at a non-finite loss, before this epoch's checkpoint
            check_weights([self.model], epoch, epochs, self.device, self.dist)
            row.update(self._evaluate())
            history.append(row)
            if self.dist.is_main:
                self.run_dir.write_metrics(history, METRIC_KEYS)
                self._checkpoint(epoch, history)
                self.console.print(epoch_line(row, epochs, EPOCH_LINE))
        return self._finish(history)

    def epoch_sources(self, epoch: int) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray] | None]:
        """Where this epoch's view params and teacher logits come from."""
        policy = self.policy.fresh(self.cfg.optim.epochs) if self.fresh else self.policy
        view = policy.epoch_view(epoch, self.cfg.views.augmented)
        t = self.teacher
        if t is not None and t.mode == "store":
            assert t.store is not None
            logits_all, params_all = (self._rows(a) for a in t.store.read_view(view, verify=True))
            return (lambda idx: params_all[idx]), (lambda idx: logits_all[idx])
        src = self.train_src
        return (lambda idx: sample_params(policy, idx, view, src.sizes_of(idx))), None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, t = self.cfg, self.teacher
        if epoch > 0 and self.augment.active:
            self.train_replayer = self.make_train_replayer(epoch)
        random.seed(hash((cfg.run.seed, epoch, self.dist.rank)))  # timm's RandomErasing draws from `random`
        partial = self.partial if self.partial is not None and self.partial["epoch"] == epoch else None
        start = time.perf_counter()
        params_of, logits_of = self.epoch_sources(epoch)
        read_s = time.perf_counter() - start
        order = epoch_order(len(self.train_src), epoch, cfg.run.seed, shuffle=True)
        batches = shard_batches(order, self.global_batch, self.dist.rank, self.dist.world, drop_last=True)
        self.model.train()
        if self.skipped is None:  # after _restore loaded the scaler; the count runs across epochs
            self.skipped = SkippedSteps(self.scaler)
        sums = np.zeros(9 + WEIGHT_BIN_COUNT)  # loss gt kd align weight correct agree n steps | weight histogram
        done = 0
        if partial is not None:  # resume mid-epoch where the step checkpoint left it
            done, sums = partial["step"], np.array(partial["sums"])
            random.setstate(partial["py_random"])
            if self.augment.active:  # DALI's random operators: replay the done batches to advance their state
                for _ in stream(self.train_src, batches[:done], self.train_replayer, params_of, logits_of, self.labels):
                    pass
            self.partial = None
        num_updates = epoch * self.steps_per_epoch + done
        every = cfg.run.checkpoint_every_steps
        with _progress(self.console) as bar:
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.optim.epochs}", total=len(batches), completed=done)
            for step, b in enumerate(stream(self.train_src, batches[done:], self.train_replayer, params_of,
                                            logits_of, self.labels), start=done):
                out, zs, zt = self.train_step(b, epoch, step)
                self.skipped.update()
                loss = out.total.item()  # the metrics below sync every step anyway
                check_step(loss, self.skipped, epoch, cfg.optim.epochs, step, len(batches), self.device, self.dist)
                num_updates += 1
                self.scheduler.step_update(num_updates)
                n = len(b.indices)
                pred = zs.detach().argmax(1)
                sums += [loss * n, out.terms["gt"].item() * n,
                         out.terms["kd"].item() * n if "kd" in out.terms else 0.0,
                         out.terms["align"].item() * n if "align" in out.terms else 0.0,
                         0.0 if out.sample_weight is None else out.sample_weight.sum().item(),
                         (pred == b.labels).sum().item(),
                         0.0 if zt is None else (pred == zt.argmax(1)).sum().item(), n, 1,
                         *self._weight_histogram(out.sample_weight)]
                bar.advance(task)
                if every and (step + 1) % every == 0 and step + 1 < len(batches) and self.dist.is_main:
                    self._step_checkpoint(epoch, step + 1, sums)
        elapsed = time.perf_counter() - start
        s = all_reduce_sum(sums.tolist(), self.device, self.dist)
        n = s[7]
        row: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": s[0] / n,
                                 "gt": s[1] / n, "train_acc": s[5] / n, "images_per_s": n / elapsed, "epoch_s": elapsed}
        if t is not None:
            row.update(kd=s[2] / n, align=s[3] / n, train_agreement=s[6] / n)
        if t is not None and t.mode == "store":
            row["store_read_s"] = read_s
        if self.objective.sample_weight is not None:
            row["weight_mean"] = s[4] / n
        if self.objective.weight_range is not None:
            row["weight_hist"] = [c / n for c in s[9:]]
        return row

    def _weight_histogram(self, weight: Tensor | None) -> np.ndarray:
        """Counts of AdaptConf's beta in ten bins over [0, 0.5] (zeros for other objectives)."""
        if weight is None or self.objective.weight_range is None:
            return np.zeros(WEIGHT_BIN_COUNT)
        bins = np.linspace(*self.objective.weight_range, WEIGHT_BIN_COUNT + 1)
        return np.histogram(weight.detach().float().cpu().numpy(), bins=bins)[0].astype(np.float64)

    def train_step(self, b: Any, epoch: int, step: int) -> tuple[Any, Tensor, Tensor | None]:
        """One optimizer step: mix, teacher logits, forward, objective, backward."""
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
        if self.erasing is not None and not erase_first:
            x = self.erasing(x)
        if t is not None and t.mode == "online":
            assert t.model is not None and x_t is not None
            with torch.no_grad(), self._autocast():
                zt = t.model(x_t).float()
        with self._autocast():
            zs = self.net(x)
        out = self.objective(zs.float(), zt, target, epoch=epoch, epochs=cfg.optim.epochs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out, zs, zt

    def _evaluate(self) -> dict[str, float]:
        """Accuracy on the test split's fixed view (and the validation split's, when held out)."""
        row = {}
        if self.val_src is not None:
            row["val_acc"] = self._accuracy(self.val_src, None)[0]
        row["test_acc"], agreement = self._accuracy(self.test_src, self.test_teacher_pred)
        if agreement is not None:
            row["test_agreement"] = agreement
        return row

    def _accuracy(self, src: Source, teacher_pred: np.ndarray | None) -> tuple[float, float | None]:
        self.model.eval()
        correct = agree = count = 0.0
        with torch.no_grad(), self._autocast():
            for b in self._eval_stream(src, self.eval_replayer, self.dist.world, self.dist.rank):
                pred = self.model(b.inputs[0].contiguous(memory_format=self.memory_format)).argmax(1)
                correct += (pred == b.labels).sum().item()
                if teacher_pred is not None:
                    agree += float((pred.cpu().numpy() == teacher_pred[b.indices]).sum())
                count += len(b.indices)
        correct, agree, count = all_reduce_sum([correct, agree, count], self.device, self.dist)
        return correct / count, (agree / count if teacher_pred is not None else None)

    # -- files -------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        m, spec = self.cfg.model, self.student_spec
        return {"model": m.name, "kwargs": m.kwargs, "num_classes": self.train_src.num_classes,
                "in_chans": self.train_src.channels, "mean": list(spec.mean), "std": list(spec.std),
                "input_size": spec.size[0], "dataset": dataset_record(self.train_src)}

    def _restore(self) -> tuple[int, list[dict[str, float]]]:
        """Load the last epoch checkpoint (and a later step checkpoint) when resuming; (next epoch, history)."""
        if self.cfg.run.checkpoint_every_steps and self.dist.world > 1:
            raise RunError("run.checkpoint_every_steps supports single-process runs; set it to 0 with torchrun")
        step_path = self.run_dir.checkpoints / "step.pt"
        if not self.run_dir.check_start(self.run_dir.state_path.exists() or step_path.exists()):
            return 0, []
        start_epoch, history = 0, []
        if self.run_dir.state_path.exists():
            state, start_epoch, history = self.run_dir.load_epoch_state()
            self._load_training_state(state, self.run_dir.state_path)
        self._restore_step(start_epoch)
        return start_epoch, history

    def _load_training_state(self, state: dict[str, Any], path: Path) -> None:
        try:
            load_state_strict(self.model, state["model"], str(path))
        except CheckpointError as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])

    def _restore_step(self, start_epoch: int) -> None:
        """Continue from a step checkpoint of the epoch that the last epoch checkpoint leaves next."""
        path = self.out / "checkpoints" / "step.pt"
        if not path.exists():
            return
        state = load_state(path)
        if int(state["epoch"]) != start_epoch:  # older than the last epoch checkpoint: superseded
            return
        self._load_training_state(state, path)
        self.partial = {"epoch": start_epoch, "step": int(state["step"]), "sums": json.loads(state["sums"]),
                        "py_random": _random_state(json.loads(state["py_random"]))}
        self.console.print(f"resuming epoch {start_epoch + 1} after step {state['step']} (step checkpoint)")

    def _training_state(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def _checkpoint(self, epoch: int, history: list[dict[str, float]]) -> None:
        self.run_dir.save_epoch_state(epoch, self._training_state(), history)
        (self.run_dir.checkpoints / "step.pt").unlink(missing_ok=True)  # superseded

    def _step_checkpoint(self, epoch: int, steps_done: int, sums: np.ndarray) -> None:
        """A recovery checkpoint inside an epoch (``run.checkpoint_every_steps``), written atomically."""
        save_state(self.out / "checkpoints" / "step.pt", {
            "epoch": epoch, "step": steps_done, **self._training_state(), "sums": json.dumps(sums.tolist()),
            "py_random": json.dumps(random.getstate())})

    def _finish(self, history: list[dict[str, float]]) -> dict[str, Any]:
        last = history[-1]
        result: dict[str, Any] = {
            "role": self.role, "objective": self.objective.name, "model": self.cfg.model.name,
            "epochs": self.cfg.optim.epochs, "test_acc": last["test_acc"],
            "test_agreement": last.get("test_agreement"), "train_samples": len(self.train_src),
            "test_samples": len(self.test_src), "images_per_s": float(np.mean([r["images_per_s"] for r in history])),
            "teacher_mode": self.teacher.mode if self.teacher else None,
            "teacher_test_acc": None if self.test_teacher_pred is None
            else float((self.test_teacher_pred == self.test_src.labels).mean()),
            "noise_rate": getattr(self.train_src, "noise_rate", None),
        }
        if self.val_src is not None:
            best = max(history, key=lambda r: r["val_acc"])
            result.update(val_samples=len(self.val_src), best_epoch=int(best["epoch"]), best_val_acc=best["val_acc"],
                          test_acc_at_best=best["test_acc"])
        if self.dist.is_main:
            save_model(self.model, self.out, self._meta())
            self.run_dir.write_result(result)
        return result


def _random_state(saved: list[Any]) -> tuple[Any, ...]:
    """``random.getstate()`` back from its JSON form (lists for tuples)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


EPOCH_LINE = (("loss", "loss {:.4f}"), ("train_acc", "train {:.4f}"), ("test_acc", "test {:.4f}"),
              ("weight_mean", "weight {:.3f}"), ("test_agreement", "agree {:.4f}"), ("images_per_s", "{:.0f} img/s"))


def train(cfg: Config, role: str = "student", resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run one training job (see :class:`Trainer`); returns the contents of ``result.json``."""
    return Trainer(cfg, role, resume, console).run()
