"""One optimizer step of a student: erasing, mixing, the teacher's logits, the objective, and scenario target hooks.

:class:`StudentStep` is the step of :class:`pipeline.train_student.Trainer`, built from exactly what a
step touches. The order follows timm: per-sample random erasing before (or, as timm's prefetcher,
after) mixup / CutMix; the cached teacher target is mixed as the images are, an online teacher
sees the mixed images. :class:`Precision` is the run's autocast, shared with evaluation and hooks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.data.loader import Batch
from pipeline.data.mixing import MixConfig, batch_rng, draw, mix_images, mix_targets, mix_teacher_logits
from pipeline.objectives import Objective, ObjectiveOutput
from pipeline.scenario import TargetHook
from pipeline.student.setup import AMP_MODES
from pipeline.student.teacher import Teacher

Eraser = Callable[[Tensor], Tensor]  # timm's RandomErasing: erases each sample of a batch independently
WEIGHT_BIN_COUNT = 10  # histogram bins over an objective's ``weight_range`` (AdaptConf's beta: [0, 0.5])


@dataclass(frozen=True)
class Precision:
    """The forward passes' autocast: ``run.amp`` (none | bf16 | fp16) on the run's device."""

    device: torch.device
    amp: str

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh autocast context (a no-op at full precision)."""
        dtype = AMP_MODES[self.amp]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)


@dataclass(eq=False)
class StudentStep:
    """The maths of one training step: what trains, how it is fed and what it learns.

    ``seed`` (``run.seed``) seeds each batch's mix draw; ``erasing`` (None: off) runs before mixing
    when ``erase_before_mix``; ``teacher`` in online mode computes the logits on the mixed images;
    ``target_hooks`` (a scenario's, ``pipeline/scenario.py``) replace the target after mixing.
    """

    net: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    memory_format: torch.memory_format
    num_classes: int
    epochs: int
    seed: int
    mix: MixConfig
    erasing: Eraser | None = None
    erase_before_mix: bool = True
    teacher: Teacher | None = None
    target_hooks: list[TargetHook] = field(default_factory=list)

    def optimizer_step(self, b: Batch, epoch: int, step: int) -> tuple[ObjectiveOutput, Tensor, Tensor | None]:
        """Mix, teacher logits, forward, objective, backward, step: (objective output, student and teacher logits)."""
        t = self.teacher
        x = b.inputs[0].contiguous(memory_format=self.memory_format)
        x_t = b.inputs[1] if len(b.inputs) > 1 else None
        zt = b.teacher_logits
        target: Tensor = b.labels
        mix = draw(self.mix, batch_rng(self.seed, epoch, step)) if self.mix.active else None
        lam = 1.0
        # timm's RandomErasing erases each sample of a batch independently (python `random`, reseeded per
        # epoch, and the device's torch generator); before mixing as timm's per-sample transform does
        # (MAE), or after it as timm's train.py does with its prefetcher (augment.erase_before_mix).
        erase_first = self.erasing is not None and self.erase_before_mix
        if erase_first:
            x = self.erasing(x)
        if mix is not None:
            x, lam = mix_images(x, mix)
            if x_t is not None:
                x_t, _ = mix_images(x_t, mix)
            elif zt is not None:  # cached logits come with a distilling objective (KD and its kin)
                zt = mix_teacher_logits(zt, lam, self.objective.kd_temperature)  # type: ignore[attr-defined]
        if mix is not None or self.mix.label_smoothing > 0:
            target = mix_targets(b.labels, self.num_classes, lam, self.mix.label_smoothing)
        for hook in self.target_hooks:
            target = hook(b, epoch, lam if mix is not None else 1.0, target)
        if self.erasing is not None and not erase_first:
            x = self.erasing(x)
        if t is not None and t.mode == "online":
            assert t.model is not None and x_t is not None
            with torch.no_grad(), self.precision.autocast():
                zt = t.model(x_t).float()
        with self.precision.autocast():
            zs = self.net(x)
        out = self.objective(zs.float(), zt, target, epoch=epoch, epochs=self.epochs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out, zs, zt


def random_erasing(probability: float, device: torch.device) -> Eraser | None:
    """timm's per-sample random erasing in pixel mode (``augment.random_erasing``; 0: off) on ``device``."""
    if probability <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability, mode="pixel", device=str(device))


def step_metrics(loss: float, out: ObjectiveOutput, zs: Tensor, zt: Tensor | None, labels: Tensor,
                 weight_range: tuple[float, float] | None) -> dict[str, tuple[Any, float]]:
    """A step's named metric sums (see ``pipeline.engine.run_loop.StepOut``): loss, accuracy, the
    objective's terms, agreement with the teacher, and the sample weights' mean and histogram."""
    n = len(labels)
    pred = zs.detach().argmax(1)
    metrics: dict[str, tuple[Any, float]] = {"loss": (loss * n, n), "train_acc": ((pred == labels).sum().item(), n)}
    for name, term in out.terms.items():
        metrics[name] = (term.item() * n, n)
    if zt is not None:
        metrics["train_agreement"] = ((pred == zt.argmax(1)).sum().item(), n)
    if out.sample_weight is not None:
        metrics["weight_mean"] = (out.sample_weight.sum().item(), n)
        if weight_range is not None:
            bins = np.linspace(*weight_range, WEIGHT_BIN_COUNT + 1)
            counts = np.histogram(out.sample_weight.detach().float().cpu().numpy(), bins=bins)[0]
            metrics["weight_hist"] = (counts.astype(np.float64), n)
    return metrics
