"""Training objectives: vanilla, kd, augconf and adaptconf, exactly as docs/design.md defines them.

Each objective maps ``(student_logits, teacher_logits, target, epoch, epochs)`` to an
:class:`ObjectiveOutput` holding the scalar to backpropagate, detached per-term scalars for
logging and the per-sample weight (AdaptConf's beta, AugConf's alpha).

``target`` is either int64 class indices ``[B]`` or a soft target ``[B, C]`` (mixup/cutmix,
label smoothing). Teacher logits may be float16 (the store's dtype); every computation runs in
float32 and is overflow-free for logits of any finite magnitude (log-softmax, sigmoid form).
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor

OBJECTIVES = ("vanilla", "kd", "augconf", "adaptconf")
# AdaptConf beta warm-up of the paper's code, by the code base whose call it reproduces (see
# ``Objective.adaptconf_warmup``): few_shot (few_shot_leaerning/) and sel_cl (noisy_labels_learning/).
WARMUP_STYLES = ("few_shot", "sel_cl")


@dataclass
class ObjectiveOutput:
    """What every objective returns."""

    total: Tensor
    terms: dict[str, Tensor]
    sample_weight: Tensor | None


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample cross-entropy for hard (``[B]`` int) or soft (``[B, C]``) targets."""
    logp = F.log_softmax(logits.float(), dim=-1)
    if target.dim() == 1:
        return -logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return -(target.float() * logp).sum(dim=-1)


def kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL_i = sum_c p_t(c) (log p_t(c) - log p_s(c))`` with ``p = softmax(z / T)``."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)


def self_confidence(student_logits: Tensor) -> Tensor:
    """``CE(z_s_i, hard(z_s_i))``: the student's cross-entropy against its own argmax."""
    return cross_entropy(student_logits, student_logits.detach().argmax(dim=-1))


@dataclass
class Objective:
    """A configured objective; call it on a batch."""

    name: str
    kd_temperature: float = 1.0
    threshold: float = 0.5
    gt_weight: float = 1.0
    kd_weight: float = 1.0
    rate: float = 0.3
    max_weight: float = 0.5
    warmup_rate: float = 0.0
    warmup_style: str = "few_shot"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; valid: {', '.join(OBJECTIVES)}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if self.name == "adaptconf" and self.threshold <= 0:
            raise ValueError(f"adaptconf threshold must be > 0, got {self.threshold}")
        if self.name == "augconf" and not 0 < self.rate <= 1:
            raise ValueError(f"augconf rate must be in (0, 1], got {self.rate}")
        if self.warmup_style not in WARMUP_STYLES:
            raise ValueError(f"unknown warmup_style {self.warmup_style!r}; valid: {', '.join(WARMUP_STYLES)}")

    @property
    def needs_teacher(self) -> bool:
        return self.name != "vanilla"

    def augconf_alpha(self, epoch: int, epochs: int) -> float:
        """``alpha = e / (E r) * theta`` while ``e < int(E r)``, else ``theta`` (0-based ``e``).

        As the paper's classification/distillers/adaptconf.py AugConf, whose ``args.epoch`` is train.py's
        0-based epoch; ``r`` = ``--superalignment-rate`` (0.3), ``theta`` = ``--superalignment-threshold`` (0.5).
        """
        ramp = int(epochs * self.rate)
        if epoch < ramp:
            return epoch / (epochs * self.rate) * self.max_weight
        return self.max_weight

    def adaptconf_warmup(self, epoch: int, epochs: int) -> float:
        """Beta warm-up factor at 0-based ``epoch`` of ``epochs``; 1 when ``warmup_rate`` is 0.

        The paper's code counts epochs from 1 (``n = epoch + 1``) and scales beta by ``n / (T r_w)``
        while ``n < int(T r_w)``, else by 1 (``adapt_conf_loss`` in few_shot_leaerning/utils/__init__.py
        and noisy_labels_learning/utils_sel/kd_loss.py, with ``r_w`` = 0.25 there). ``T`` is what the
        caller passes: ``epochs`` for ``few_shot`` (train_classifier.py / train_meta.py pass max_epoch),
        ``epochs + 1`` for ``sel_cl`` (train_Sel-CL_fine-tuning.py passes ``args.epoch + 1``).
        """
        if self.warmup_rate <= 0:
            return 1.0
        n = epoch + 1
        total = epochs + 1 if self.warmup_style == "sel_cl" else epochs
        if n < int(total * self.warmup_rate):
            return n / (total * self.warmup_rate)
        return 1.0

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor,
                 epoch: int = 0, epochs: int = 1) -> ObjectiveOutput:
        zs = student_logits.float()
        ce = cross_entropy(zs, target).mean()
        gt = self.gt_weight * ce
        terms: dict[str, Tensor] = {"gt": ce.detach()}
        if self.name == "vanilla":
            return ObjectiveOutput(gt, terms, None)
        if teacher_logits is None:
            raise ValueError(f"objective {self.name!r} needs teacher logits")
        zt = teacher_logits.float()
        t2 = self.kd_temperature ** 2
        kl = kl_per_sample(zs, zt, self.kd_temperature)
        terms["kd"] = (t2 * kl).mean().detach()
        if self.name == "kd":
            return ObjectiveOutput(gt + self.kd_weight * t2 * kl.mean(), terms, None)
        c_s = self_confidence(zs)
        terms["align"] = c_s.mean().detach()
        if self.name == "augconf":
            alpha = self.augconf_alpha(epoch, epochs)
            weak = (1 - alpha) * t2 * kl.mean() + alpha * c_s.mean()
            return ObjectiveOutput(gt + self.kd_weight * weak, terms, torch.full_like(c_s, alpha).detach())
        c_t = cross_entropy(zs, zt.argmax(dim=-1))
        beta = torch.sigmoid((c_s - c_t).detach() / self.threshold) * self.adaptconf_warmup(epoch, epochs)
        weak = ((1 - beta) * t2 * kl + beta * c_s).mean()
        return ObjectiveOutput(gt + self.kd_weight * weak, terms, beta)


def build_objective(name: str, *, kd_temperature: float = 1.0, threshold: float = 0.5,
                    gt_weight: float = 1.0, kd_weight: float = 1.0, rate: float = 0.3,
                    max_weight: float = 0.5, warmup_rate: float = 0.0,
                    warmup_style: str = "few_shot") -> Objective:
    """Public factory: ``build_objective("adaptconf", threshold=0.5)(zs, zt, y, epoch=e, epochs=E)``.

    ``rate``/``max_weight`` are AugConf's ramp ``r`` and ``theta``; ``threshold`` is AdaptConf's
    temperature ``theta``; ``warmup_rate`` is AdaptConf's optional beta warm-up ``r_w`` and
    ``warmup_style`` which upstream call of it to reproduce (``Objective.adaptconf_warmup``).
    Defaults are the paper's code: ``rate`` 0.3 and ``max_weight`` 0.5 (classification/train.py's
    ``--superalignment-rate`` / ``--superalignment-threshold``, read by distillers/adaptconf.py AugConf).
    """
    return Objective(name, kd_temperature, threshold, gt_weight, kd_weight, rate, max_weight, warmup_rate,
                     warmup_style)

