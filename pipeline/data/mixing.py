"""Mixup / CutMix on a batch, with the teacher target mixed the same way.

With a cached teacher the images are mixed after the teacher saw them, so the teacher target
becomes the same mix of the two cached teacher distributions (docs/design.md). To keep the
objectives' logits interface, the mix is returned as logits whose softmax at the KD temperature
``T`` is exactly ``lam * p_T(z_a) + (1 - lam) * p_T(z_b)``: ``T * log(mix)``. In online mode the
teacher sees the mixed image instead and no approximation is made.

Random draws come from a numpy generator seeded per (seed, epoch, step), so every rank mixes
identically and a resumed run repeats the same draws (timm's ``Mixup`` draws from numpy's global
generator, which neither holds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MixConfig:
    """``mixup``/``cutmix`` are Beta(alpha, alpha) parameters (0 = off); ``prob`` the chance a batch is mixed."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


@dataclass
class MixDraw:
    """One batch's draw: mixing weight, whether it is CutMix, and the box (normalized y0, x0, y1, x1)."""

    lam: float
    cutmix: bool
    box: tuple[float, float, float, float] | None


def draw(cfg: MixConfig, rng: np.random.Generator) -> MixDraw | None:
    """Sample this batch's mix (None: the batch is not mixed)."""
    if not cfg.active or rng.random() >= cfg.prob:
        return None
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or rng.random() < cfg.switch_prob)
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixDraw(lam, False, None)
    cut = math.sqrt(1 - lam)
    cy, cx = rng.random(2)
    y0, y1 = max(cy - cut / 2, 0.0), min(cy + cut / 2, 1.0)
    x0, x1 = max(cx - cut / 2, 0.0), min(cx + cut / 2, 1.0)
    return MixDraw(lam, True, (y0, x0, y1, x1))


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of one batch's mix: identical on every rank and after a resume."""
    return np.random.default_rng([seed, epoch, step, 0x6D6978])


def mix_images(x: Tensor, d: MixDraw) -> tuple[Tensor, float]:
    """Mix ``x`` with its batch reversed (``x.flip(0)``); returns the images and the effective lam."""
    if not d.cutmix:
        return x.mul(d.lam).add(x.flip(0), alpha=1 - d.lam), d.lam
    assert d.box is not None
    h, w = x.shape[-2:]
    y0, x0, y1, x1 = (round(d.box[0] * h), round(d.box[1] * w), round(d.box[2] * h), round(d.box[3] * w))
    out = x.clone()
    out[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
    return out, lam


def mix_targets(labels: Tensor, num_classes: int, lam: float, smoothing: float) -> Tensor:
    """Soft ground-truth target ``lam * y + (1 - lam) * y[reversed]`` with label smoothing."""
    off = smoothing / num_classes
    y = F.one_hot(labels.long(), num_classes).float() * (1 - smoothing) + off
    return y * lam + y.flip(0) * (1 - lam)


def mix_teacher_logits(logits: Tensor, lam: float, temperature: float) -> Tensor:
    """Logits whose softmax at ``temperature`` is the lam-mix of the two teacher distributions."""
    z = logits.float() / temperature
    logp = torch.logaddexp(F.log_softmax(z, -1) + math.log(max(lam, 1e-12)),
                           F.log_softmax(z.flip(0), -1) + math.log(max(1 - lam, 1e-12)))
    return temperature * logp
