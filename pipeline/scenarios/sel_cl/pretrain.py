"""``w2s sel-cl`` (:func:`pretrain`): Sel-CL pre-training as a task of the shared run loop.

Epochs before ``sel_cl.warmup_epochs`` train the unsupervised InfoNCE term alone; every epoch
ends with the kNN selection of confident examples and pairs on the whole training set's
embeddings, which the next epoch's supervised contrastive, similarity and classification terms
use (upstream: ggjy/vision_weak_to_strong noisy_labels_learning/CIFAR/train_Sel-CL.py). The
selection is part of the checkpoint, so ``--resume`` continues to the same weights. The run
directory ends with ``model.safetensors`` + ``model.json`` (the backbone with its classifier, a
``model.pretrained`` / ``teacher.checkpoint`` like any trained model), ``projection.safetensors``
and ``selection.npz`` (the last selection, over the rows of the training part).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import save_file
from timm.scheduler import MultiStepLRScheduler
from torch import Tensor, nn

from pipeline.engine.checkpoint import CheckpointError, atomic_write

from pipeline.models.files import load_state_strict, save_model
from pipeline.config.schema import Config
from pipeline.data.batch_augment import ContrastiveAugment, plain_view, step_rng
from pipeline.data.loader import epoch_order
from pipeline.engine.run_loop import Epoch, RunLoop, StepOut, Task
from pipeline.engine.runtime import RunError, setup, stderr_console
from pipeline.scenarios.sel_cl.losses import sel_cl_backward
from pipeline.scenarios.sel_cl.queue import KeyMemory, SupQueue, momentum_update
from pipeline.scenarios.sel_cl.selection import PairSelection, select_examples, select_pairs, selection_precision_recall
from pipeline.scenarios.sel_cl.steps import Memories, SelCLNet, StepConfig, accuracy, embed_all, key_encoder, sel_cl_step, warmup_step
from pipeline.data.sources.registry import load_run_splits
from pipeline.student.specs import dataset_record, input_spec
from pipeline.student.setup import build_model

METRIC_KEYS = ("epoch", "lr", "loss", "uns", "sup_con", "ce", "sim", "selected", "selected_fraction",
               "selection_precision", "selection_recall", "pair_threshold", "val_acc", "test_acc", "images_per_s",
               "epoch_s", "select_s")
EPOCH_LINE = (("loss", "loss {:.4f}"), ("selection_precision", "precision {:.4f}"),
              ("selection_recall", "recall {:.4f}"), ("test_acc", "test {:.4f}"), ("images_per_s", "{:.0f} img/s"))
VIEWS, MIXING, CLASSIFY = 0, 1, 2  # random streams of a step (pipeline.data.batch_augment.step_rng)
NO_NOISE = "Sel-CL selects clean examples among noisy labels; set data.noise_mode and data.noise_rate"


class EmptySelection(RunError):
    """Sel-CL's kNN selection kept no example: this model cannot be trained with these settings (a setting's
    selection, ``w2s select-settings --scenario noisy``, reads it as a candidate that does not qualify)."""


@dataclass
class Batch:
    """One step's samples: dataset rows and their two augmented views."""

    indices: Tensor
    views: tuple[Tensor, Tensor]


def check_config(cfg: Config) -> None:
    """Config-only refusals, before a run directory is touched."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("w2s sel-cl runs in one process; start it without torchrun")
    if cfg.data.noise_mode == "none" or cfg.data.noise_rate == 0:
        raise RunError(NO_NOISE)
    if cfg.run.amp != "none":
        raise RunError(f"w2s sel-cl trains in float32; got run.amp={cfg.run.amp!r}, set run.amp=none")


def check_data(cfg: Config, train: Any, clean: Any) -> None:
    """Refusals that need the data: encoded images, sizes the batch, kNN and memories cannot fit."""
    s, b, n = cfg.sel_cl, cfg.optim.batch_size, len(train)
    if train.encoded:
        raise RunError(f"w2s sel-cl needs images held in memory; {train.name} is read as encoded files")
    head = np.arange(min(n, 64))
    if len(clean) != n or not np.array_equal(clean.read(head), train.read(head)):
        raise RunError("the noise-free copy of the training part does not hold the same rows")
    if n < b:
        raise RunError(f"{n} training samples are fewer than one batch of {b}")
    if s.k >= n:
        raise RunError(f"sel_cl.k={s.k} neighbours need more than the {n} training samples; lower sel_cl.k")
    if s.queue_per_class * train.num_classes < b:
        raise RunError(f"the supervised queue ({s.queue_per_class} x {train.num_classes} classes x 2) cannot hold "
                       f"a batch of {b} x 2 views; raise sel_cl.queue_per_class")
    if s.uns_queue_size < b:
        raise RunError(f"sel_cl.uns_queue_size={s.uns_queue_size} is smaller than a batch of {b}")


def build_schedule(optimizer: torch.optim.Optimizer, cfg: Config, steps: int) -> MultiStepLRScheduler:
    """Upstream's per-update schedule (ShikunLi/Sel-CL utils/lr_scheduler.py, ``--lr-scheduler step``).

    Linear warm-up from ``lr / lr_warmup_multiplier`` over ``lr_warmup_epochs``, then ``lr`` times
    ``decay_rate`` for each milestone reached, from the first update of milestone epoch ``m``
    (0-based). ``step_update(k)`` after update ``k`` sets the lr of the next one; timm applies a
    milestone one update early (``t + 1``), hence the ``+ 1``.
    """
    o, s = cfg.optim, cfg.sel_cl
    return MultiStepLRScheduler(optimizer, decay_t=[int(m * steps) + 1 for m in o.milestones], decay_rate=o.decay_rate,
                                warmup_t=int(s.lr_warmup_epochs * steps), warmup_lr_init=o.lr / s.lr_warmup_multiplier,
                                warmup_prefix=False, t_in_epochs=False)


def save_selection(path: Path, selection: dict[str, Tensor], noisy: Tensor, clean: np.ndarray) -> None:
    """``selection.npz`` (atomic): the selection over the training part's rows, with its noisy and clean labels."""
    arrays = {k: v.cpu().numpy() for k, v in selection.items()}
    arrays.update(noisy_labels=noisy.cpu().numpy(), clean_labels=clean)

    def write(p: str) -> None:
        with open(p, "wb") as f:  # a file object: np.savez would append .npz to a bare temporary name
            np.savez(f, **arrays)

    atomic_write(path, write)


class SelCLTrainer(Task):
    """One Sel-CL pre-training run (see the module docstring)."""

    csv_keys = METRIC_KEYS
    epoch_line = EPOCH_LINE

    def __init__(self, cfg: Config, console: Console) -> None:
        self.cfg, self.console = cfg, console
        self.output, self.epochs = Path(cfg.run.output), cfg.optim.epochs
        self.checkpoint_every_steps, self.trackers = cfg.run.checkpoint_every_steps, cfg.run.log
        s = cfg.sel_cl
        self.step_cfg = StepConfig(s.mixup_alpha, s.uns_t, s.sup_t, s.lambda_c, s.lambda_s, s.sup_queue_begin)
        self.selection: dict[str, Tensor] | None = None  # mask, confidence, corrected_labels of the last epoch
        self.pairs: PairSelection | None = None
        self.chosen = np.zeros(0, dtype=np.int64)
        self.select_s = 0.0

    def prepare(self) -> None:
        cfg, s = self.cfg, self.cfg.sel_cl
        self.device, self.dist = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed, cfg.run.deterministic)
        data = dataclasses.asdict(cfg.data)
        splits = load_run_splits(**data, run_seed=cfg.run.seed)
        self.train_src, self.val_src, self.test_src = splits.train, splits.val, splits.test
        clean = load_run_splits(**{**data, "noise_mode": "none", "noise_rate": 0.0}, run_seed=cfg.run.seed).train
        check_data(cfg, self.train_src, clean)
        self.noisy = torch.as_tensor(self.train_src.labels, device=self.device)
        self.clean_labels = np.asarray(clean.labels)
        self.batch, n = cfg.optim.batch_size, len(self.train_src)
        self.steps_per_epoch = n // self.batch
        spec = input_spec(self.train_src, cfg.model.mean, cfg.model.std, cfg.model.input_size)
        self.spec = spec
        self.augment = ContrastiveAugment(spec.size, spec.mean, spec.std, scale=(s.crop_scale, 1.0))
        c = self.train_src.num_classes
        backbone = build_model(cfg.model, cfg.run, c, self.train_src.channels, self.device, self.dist, self.console)
        self.net = SelCLNet(backbone.model, s.low_dim).to(self.device)
        self.mem = Memories(key_encoder(self.net), KeyMemory(s.low_dim, s.uns_queue_size, device=self.device),
                            SupQueue.for_classes(s.queue_per_class, c, s.low_dim, device=self.device))
        o = cfg.optim  # upstream: plain momentum SGD, weight decay on every parameter
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=o.lr, momentum=o.momentum,
                                         weight_decay=o.weight_decay)
        self.scheduler = build_schedule(self.optimizer, cfg, self.steps_per_epoch)

    def modules(self) -> list[nn.Module]:
        return [self.net, self.mem.key]

    # -- inputs ------------------------------------------------------------------------------
    def _views(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        images = self.train_src.read(rows)
        return self.augment(images, rng, self.device), self.augment(images, rng, self.device)

    def _plain(self, src: Any, rows: np.ndarray) -> Tensor:
        return plain_view(src.read(rows), self.spec.size, self.spec.mean, self.spec.std, self.device)

    # -- an epoch ----------------------------------------------------------------------------
    def epoch(self, epoch: int, start_step: int) -> Epoch:
        if epoch >= self.cfg.sel_cl.warmup_epochs and self.pairs is None:  # no warm-up: select on the initial model
            self._select()
        order = epoch_order(len(self.train_src), epoch, self.cfg.run.seed, shuffle=True)
        batches = [order[i * self.batch:(i + 1) * self.batch] for i in range(self.steps_per_epoch)]
        self.net.train()
        return Epoch(len(batches), self._batches(batches, epoch, start_step))

    def _batches(self, batches: list[np.ndarray], epoch: int, start: int) -> Iterator[Batch]:
        for step in range(start, len(batches)):
            rows = batches[step]
            idx = torch.as_tensor(rows, device=self.device)
            yield Batch(idx, self._views(rows, step_rng(self.cfg.run.seed, epoch, step, VIEWS)))

    def _cls_views(self, epoch: int, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """Upstream's ``train_selected_loader``: a batch drawn uniformly, with replacement, from the selected examples."""
        assert self.selection is not None
        rng = step_rng(self.cfg.run.seed, epoch, step, CLASSIFY)
        rows = self.chosen[rng.integers(0, len(self.chosen), size=self.batch)]
        a, b = self._views(rows, rng)
        return a, b, self.noisy[torch.as_tensor(rows, device=self.device)]

    def train_step(self, batch: Batch, epoch: int, step: int) -> StepOut:
        x1, x2 = batch.views
        rng = step_rng(self.cfg.run.seed, epoch, step, MIXING)
        self.optimizer.zero_grad(set_to_none=True)
        if epoch < self.cfg.sel_cl.warmup_epochs:
            losses = warmup_step(self.net, self.mem, x1, x2, batch.indices, self.step_cfg, rng)
            losses["total"].backward()
        else:
            assert self.pairs is not None
            losses = sel_cl_step(self.net, self.mem, self.pairs, x1, x2, batch.indices,
                                 lambda: self._cls_views(epoch, step), epoch, self.step_cfg, rng)
            s = self.cfg.sel_cl
            sel_cl_backward(losses, self.net.parameters(), lambda_s=s.lambda_s, sim_clip=s.sim_grad_clip)
        self.optimizer.step()
        self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
        momentum_update(self.mem.key, self.net, self.cfg.sel_cl.ema_momentum)
        loss = losses["total"].item()
        n = len(batch.indices)
        metrics: dict[str, tuple[Any, float]] = {"loss": (loss * n, n)}
        for name in ("uns", "sup_con", "ce", "sim"):
            if name in losses:
                metrics[name] = (losses[name].item() * n, n)
        return StepOut(loss, metrics)

    # -- end of an epoch ---------------------------------------------------------------------
    def _select(self) -> None:
        """kNN selection of confident examples and pairs on the embeddings of the whole training part."""
        start, s, n = time.perf_counter(), self.cfg.sel_cl, len(self.train_src)
        feats = embed_all(self.net, n, s.select_batch_size, lambda rows: self._plain(self.train_src, rows))
        sel = select_examples(feats, self.noisy, self.train_src.num_classes, k=s.k, alpha=s.alpha,
                              exclude_self=s.exclude_self)
        if not bool(sel.mask.any()):
            raise EmptySelection(f"the kNN selection kept no example (quota {sel.quota}); lower sel_cl.alpha or "
                                 "sel_cl.k")
        self._set_selection({"mask": sel.mask, "confidence": sel.confidence, "corrected_labels": sel.corrected_labels},
                            select_pairs(feats, self.noisy, sel.mask, s.beta))
        self.select_s = time.perf_counter() - start

    def _set_selection(self, selection: dict[str, Tensor], pairs: PairSelection) -> None:
        self.selection, self.pairs = selection, pairs
        self.chosen = np.flatnonzero(selection["mask"].cpu().numpy())  # rows the classification batches draw from

    def epoch_row(self, epoch: int, means: dict[str, Any], elapsed: float) -> dict[str, Any]:
        self._select()
        assert self.selection is not None and self.pairs is not None
        mask = self.selection["mask"]
        precision, recall = selection_precision_recall(mask, self.noisy, torch.as_tensor(self.clean_labels))
        row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], **means,
                               "selected": int(mask.sum()), "selected_fraction": float(mask.float().mean()),
                               "selection_precision": precision, "selection_recall": recall,
                               "pair_threshold": self.pairs.threshold, "epoch_s": elapsed, "select_s": self.select_s,
                               "images_per_s": self.steps_per_epoch * self.batch / elapsed}
        return row

    def evaluate(self) -> dict[str, Any]:
        """Accuracy of the backbone's classifier on the un-augmented test split (and validation part)."""
        size = self.cfg.optim.eval_batch_size
        row = {}
        if self.val_src is not None:
            row["val_acc"] = accuracy(self.net.backbone, self.val_src.labels, size,
                                      lambda rows: self._plain(self.val_src, rows))
        row["test_acc"] = accuracy(self.net.backbone, self.test_src.labels, size,
                                   lambda rows: self._plain(self.test_src, rows))
        return row

    # -- state and files ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.backbone.state_dict(), "projection": self.net.projection.state_dict(),
                "key_model": self.mem.key.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "key_memory": self.mem.keys.state_dict(),
                "sup_queue": self.mem.queue.state_dict(), "selection": self.selection,
                "pairs": None if self.pairs is None else self.pairs.state_dict(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any], origin: Path) -> None:
        try:
            load_state_strict(self.net.backbone, state["model"], str(origin))
            load_state_strict(self.net.projection, state["projection"], str(origin))
            load_state_strict(self.mem.key, state["key_model"], str(origin))
            self.mem.keys.load_state_dict(state["key_memory"])
            self.mem.queue.load_state_dict(state["sup_queue"])
        except (CheckpointError, ValueError) as exc:
            raise RunError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["selection"] is not None:
            dev = self.device
            self._set_selection({k: v.to(dev) for k, v in state["selection"].items()}, PairSelection.from_state_dict(
                {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in state["pairs"].items()}))
        torch.set_rng_state(state["torch_rng"])

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        last, m, spec = history[-1], self.cfg.model, self.spec
        save_model(self.net.backbone, self.output, {
            "model": m.name, "kwargs": m.kwargs, "num_classes": self.train_src.num_classes,
            "in_chans": self.train_src.channels, "mean": list(spec.mean), "std": list(spec.std),
            "input_size": spec.size[0], "dataset": dataset_record(self.train_src)})
        proj = {k: v.detach().cpu().contiguous() for k, v in self.net.projection.state_dict().items()}
        atomic_write(self.output / "projection.safetensors", lambda p: save_file(proj, p))
        assert self.selection is not None
        save_selection(self.output / "selection.npz", self.selection, self.noisy, self.clean_labels)
        return {"role": "sel_cl", "model": m.name, "epochs": self.epochs, "test_acc": last["test_acc"],
                "selected": last["selected"], "selection_precision": last["selection_precision"],
                "selection_recall": last["selection_recall"], "pair_threshold": last["pair_threshold"],
                "noise_rate": getattr(self.train_src, "noise_rate", None), "train_samples": len(self.train_src),
                "test_samples": len(self.test_src)}


def pretrain(cfg: Config, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run Sel-CL pre-training (see :class:`SelCLTrainer`); returns the contents of ``result.json``."""
    check_config(cfg)
    console = console or stderr_console()
    return RunLoop(SelCLTrainer(cfg, console), resume, console).run()
