"""What a supervised or student run builds from its config before the first step: model and optimizer.

:func:`build_model` creates the timm-registered model (optionally from pretrained weights, with only
its classifier trainable under ``model.freeze_backbone``), places it for the run's precision and
memory format and wraps what trains in DDP / ``torch.compile``;
:func:`build_optimizer` sizes the batches for the process count and makes timm's optimizer and
scheduler (the linear scaling rule applies when ``optim.batch_per_process`` changes the global
batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config.schema import ModelConfig, OptimConfig, RunConfig
from pipeline.models import create
from pipeline.engine.runtime import Dist, RunError

AMP_MODES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # run.amp's choices (AMP_CHOICES)


@dataclass
class Placed:
    """The model (for weights and evaluation), what trains (DDP / compiled wrapper), its memory format and scaler."""

    model: nn.Module
    net: nn.Module
    memory_format: torch.memory_format
    scaler: torch.amp.GradScaler


def build_model(m: ModelConfig, run: RunConfig, num_classes: int, channels: int, device: torch.device, dist: Dist,
                console: Console) -> Placed:
    """Create ``model.name`` (seeded by ``run.seed``), load ``model.pretrained`` and place it for the run."""
    torch.manual_seed(run.seed)
    model = create(m.name, num_classes, channels, **m.kwargs)
    if m.pretrained:
        from pipeline.models.pretrained import load_pretrained

        report = load_pretrained(model, m.pretrained, kind=m.pretrained_kind, reset_head=m.pretrained_reset_head)
        if dist.is_main:
            console.print(f"loaded {m.pretrained} ({report.kind}): {len(report.missing)} kept as initialized, "
                          f"{len(report.unexpected)} dropped, {len(report.reset)} re-initialized, "
                          f"{len(report.resized)} resampled")
    if m.freeze_backbone:
        freeze_backbone(model, m.name)
    if run.amp == "fp16" and device.type != "cuda":
        raise RunError("run.amp=fp16 needs a CUDA device; use bf16 on CPU")
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    net: nn.Module = model
    if dist.world > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if run.compile:
        net = torch.compile(net, backend=run.compile_backend)  # type: ignore[assignment]
    return Placed(model, net, memory_format, torch.amp.GradScaler("cuda", enabled=run.amp == "fp16"))


def freeze_backbone(model: nn.Module, name: str) -> None:
    """Leave only the classifier trainable (``model.freeze_backbone``); timm's optimizer then takes only its weights.

    The classifier is what ``get_classifier()`` / ``pretrained_cfg`` name (:func:`classifier_prefixes`).
    """
    from pipeline.models.pretrained import classifier_prefixes

    prefixes = classifier_prefixes(model)
    head = [n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in prefixes)]
    if not head:
        raise RunError(f"model.freeze_backbone: {name} names no classifier with weights (get_classifier); "
                       "unset model.freeze_backbone")
    for n, p in model.named_parameters():
        p.requires_grad_(n in head)


@dataclass
class Optimization:
    """The optimizer, its scheduler and the batch sizes they were made for.

    Drive the scheduler with ``scheduler.step(epoch)`` at the start of every epoch and
    ``scheduler.step_update(n)`` after update ``n``: the call that does not match the schedule's unit
    (``optim.sched_on_updates``) does nothing, as in timm's train.py.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    global_batch: int
    local_batch: int
    steps_per_epoch: int


def _whole(value: float, key: str) -> int:
    """``value`` as a whole number of epochs, for a schedule stepped per epoch."""
    if value != int(value):
        raise RunError(f"{key}={value} is not a whole number of epochs, but the schedule steps once per epoch "
                       "(timm train.py); set optim.sched_on_updates=true to step it every update")
    return int(value)


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig, steps: int, scale: float = 1.0) -> Scheduler:
    """timm 0.6.12 ``create_scheduler`` as the paper's ``classification/train.py`` calls it, per epoch or per update.

    Cosine: ``CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_lr_init=warmup_lr,
    warmup_t=warmup_epochs)`` with timm's default ``warmup_prefix=False`` (the warm-up is part of the
    ``epochs``; upstream's ``cooldown_epochs`` is 0). Multistep follows ``torch.optim.lr_scheduler.MultiStepLR``
    (epoch ``m`` of ``milestones`` is the first at the decayed lr: few_shot_leaerning/utils/__init__.py
    ``make_optimizer``); timm applies milestone ``d`` at ``t = d - 1``, hence ``d = m + 1``. With
    ``sched_on_updates`` every time is counted in updates (``steps`` per epoch), the same curve sampled
    at each update.
    """
    unit = steps if o.sched_on_updates else 1
    if o.sched_on_updates:
        warmup_t, milestones = round(o.warmup_epochs * steps), [round(m * steps) for m in o.milestones]
    else:
        warmup_t = _whole(o.warmup_epochs, "optim.warmup_epochs")
        milestones = [_whole(m, "optim.milestones") for m in o.milestones]
    common = dict(warmup_t=warmup_t, warmup_lr_init=o.warmup_lr, warmup_prefix=False,
                  t_in_epochs=not o.sched_on_updates)
    if o.schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=o.epochs * unit, lr_min=o.min_lr * scale, **common)
    if o.schedule == "multistep":
        return MultiStepLRScheduler(optimizer, decay_t=[m + 1 for m in milestones], decay_rate=o.decay_rate, **common)
    raise RunError(f"optim.schedule must be cosine or multistep, got {o.schedule!r}")


def build_optimizer(model: nn.Module, o: OptimConfig, world: int, num_train: int) -> Optimization:
    """timm's optimizer and the recipe's schedule (:func:`build_scheduler`), for ``world`` processes."""
    global_batch = o.batch_per_process * world if o.batch_per_process else o.batch_size
    scale = global_batch / o.batch_size  # linear scaling rule (1 when the recipe's batch is kept)
    if global_batch % world:
        raise RunError(f"global batch {global_batch} is not divisible by the {world} processes")
    steps = num_train // global_batch
    if steps == 0:
        raise RunError(f"{num_train} training samples are fewer than one batch of {global_batch}")
    opt_name = ("sgd" if o.nesterov else "momentum") if o.name == "sgd" else o.name
    kwargs: dict[str, Any] = {"momentum": o.momentum} if o.name == "sgd" else {}
    if o.layer_decay > 0:
        kwargs["layer_decay"] = o.layer_decay
    optimizer = create_optimizer_v2(model, opt=opt_name, lr=o.lr * scale, weight_decay=o.weight_decay,
                                    filter_bias_and_bn=o.filter_bias_and_bn, **kwargs)
    return Optimization(optimizer, build_scheduler(optimizer, o, steps, scale), global_batch, global_batch // world,
                        steps)
