"""One optimizer step of a student: erasing, mixing, the teacher's logits, the objective, and label correction.

:class:`StudentStep` is the step side of :class:`pipeline.train_student.Trainer` (a mixin over its
attributes). The order follows timm: per-sample random erasing before (or, as timm's prefetcher,
after) mixup / CutMix; the cached teacher target is mixed as the images are, an online teacher
sees the mixed images.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.data.mixing import batch_rng, draw, mix_images, mix_targets, mix_teacher_logits
from pipeline.student.setup import AMP_MODES
from pipeline.data.views import sample_params


class StudentStep:
    """The maths of one training step of a :class:`~pipeline.train_student.Trainer`."""

    cfg: Any
    device: torch.device
    epochs: int
    teacher: Any
    objective: Any
    mix: Any
    erasing: Any
    net: Any
    optimizer: Any
    scaler: Any
    memory_format: torch.memory_format
    train_src: Any
    policy: Any
    clean_replayer: Any

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

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = AMP_MODES[self.cfg.run.amp]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)
