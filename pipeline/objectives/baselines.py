"""The weak-to-strong and distillation losses AdaptConf is compared against, one registered class each.

- ``logconf``: OpenAI's auxiliary confidence loss, ``logconf_loss_fn`` in
  openai/weak-to-strong ``weak_to_strong/loss.py``.
- ``product``: OpenAI's product loss, ``product_loss_fn`` in the same file.
- ``bootstrap_soft`` / ``bootstrap_hard``: Reed et al. 2015, "Training deep neural networks on
  noisy labels with bootstrapping" (ICLR workshop), eqs. 5 and 6 (no code was published with it).
- ``dkd``: decoupled knowledge distillation (Zhao et al., CVPR 2022), ``dkd_loss`` and ``DKD`` in
  megvii-research/mdistiller ``mdistiller/distillers/DKD.py``, defaults from ``mdistiller/engine/cfg.py``.

Each adds its teacher part to the ground-truth term as every objective does:
``gt_weight CE(z_s, y) + kd_weight L_teacher``. Everything runs in log space, so no logit of finite
magnitude overflows (``docs/objectives.md`` gives the formulas and where each differs from its source).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.objectives import KD, ObjectiveOutput, cross_entropy, param, register_objective, self_confidence

DKD_TARGETS = ("label", "teacher")


def _teacher_probs(zt: Tensor) -> Tensor:
    """The weak labels as OpenAI's losses take them: the teacher's softmax (temperature 1)."""
    return F.softmax(zt, dim=-1)


@register_objective
@dataclass
class LogConf(KD):
    """OpenAI's auxiliary confidence loss: ``CE(z_s, (1 - c) p_t + c hard(p_s))``, with
    ``c = aux_coef x (progress if progress <= aux_warmup else 1)``."""

    name: ClassVar[str] = "logconf"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd", "align")
    sample_weight: ClassVar[str | None] = "aux"

    aux_coef: float = param(0.5, "weight of the student's hardened predictions in the target (OpenAI's aux_coef)",
                            lo=0, hi=1)
    aux_warmup: float = param(0.1, "share of training before the full weight (OpenAI's warmup_frac)", lo=0, hi=1)

    def aux_weight(self, epoch: int, epochs: int) -> float:
        """``aux_coef x (1 if e / E > aux_warmup else e / E)``, upstream's ``step_frac`` taken per epoch
        (0-based ``e``): the weight grows to ``aux_coef x aux_warmup`` and then jumps to ``aux_coef``."""
        frac = epoch / epochs
        return self.aux_coef * (1.0 if frac > self.aux_warmup else frac)

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        pt = _teacher_probs(zt)
        coef = self.aux_weight(epoch, epochs)
        hard = self.harden(F.softmax(zs, dim=-1).detach(), pt)
        target = pt * (1 - coef) + hard * coef
        loss = cross_entropy(zs, target)
        terms["kd"] = cross_entropy(zs, pt).mean().detach()
        terms["align"] = cross_entropy(zs, hard).mean().detach()
        return ObjectiveOutput(gt + self.kd_weight * loss.mean(), terms, torch.full_like(loss, coef).detach())

    @staticmethod
    def harden(ps: Tensor, pt: Tensor) -> Tensor:
        """The student's hardened predictions, one-hot ``[B, C]``.

        Two classes (upstream): class 0 where ``p_s(0)`` is at least its ``q``-quantile over the
        batch, ``q`` being the weak labels' mean share of class 1, so the hardened labels keep the
        weak labels' class balance. Upstream asserts two classes; for more this uses the argmax.
        """
        if ps.shape[1] == 2:
            threshold = torch.quantile(ps[:, 0], pt.mean(dim=0)[1])
            first = (ps[:, 0] >= threshold).float()
            return torch.stack([first, 1 - first], dim=1)
        return F.one_hot(ps.argmax(dim=-1), ps.shape[1]).float()


@register_objective
@dataclass
class Product(KD):
    """OpenAI's product loss: ``CE(z_s, normalize(p_s^product_beta x p_t^product_alpha))``, the target detached."""

    name: ClassVar[str] = "product"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd")

    product_alpha: float = param(1.0, "exponent of the weak model's probabilities (OpenAI's alpha)", lo=0)
    product_beta: float = param(1.0, "exponent of the strong model's own probabilities (OpenAI's beta)", lo=0)

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        log_target = self.product_beta * F.log_softmax(zs, -1) + self.product_alpha * F.log_softmax(zt, -1)
        target = F.softmax(log_target, dim=-1).detach()  # the normalized product, computed in log space
        loss = cross_entropy(zs, target).mean()
        terms["kd"] = loss.detach()
        return ObjectiveOutput(gt + self.kd_weight * loss, terms, None)


@register_objective
@dataclass
class BootstrapSoft(KD):
    """Reed et al.'s soft bootstrapping: ``-sum_k (b t_k + (1 - b) q_k) log q_k`` with ``t`` the teacher's
    (hard) label and ``q`` the student's softmax, gradients through both: ``b CE(z_s, t) + (1 - b) H(q)``."""

    name: ClassVar[str] = "bootstrap_soft"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd", "align")

    bootstrap_soft_beta: float = param(0.95, "weight b of the teacher's label (Reed et al.: 0.95 for soft)",
                                       lo=0, hi=1)

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        b = self.bootstrap_soft_beta
        label = cross_entropy(zs, zt.argmax(dim=-1))
        logq = F.log_softmax(zs, dim=-1)
        entropy = -(logq.exp() * logq).sum(dim=-1)
        terms["kd"], terms["align"] = label.mean().detach(), entropy.mean().detach()
        return ObjectiveOutput(gt + self.kd_weight * (b * label + (1 - b) * entropy).mean(), terms, None)


@register_objective
@dataclass
class BootstrapHard(KD):
    """Reed et al.'s hard bootstrapping: ``-sum_k (b t_k + (1 - b) z_k) log q_k`` with ``z`` the one-hot of the
    student's argmax: ``b CE(z_s, t) + (1 - b) CE(z_s, argmax z_s)``."""

    name: ClassVar[str] = "bootstrap_hard"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd", "align")

    bootstrap_hard_beta: float = param(0.8, "weight b of the teacher's label (Reed et al.: 0.8 for hard)",
                                       lo=0, hi=1)

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        b = self.bootstrap_hard_beta
        label = cross_entropy(zs, zt.argmax(dim=-1))
        own = self_confidence(zs)
        terms["kd"], terms["align"] = label.mean().detach(), own.mean().detach()
        return ObjectiveOutput(gt + self.kd_weight * (b * label + (1 - b) * own).mean(), terms, None)


@register_objective
@dataclass
class DKD(KD):
    """Decoupled KD: ``min((e + 1) / dkd_warmup, 1) x T^2 (dkd_alpha TCKD + dkd_beta NCKD)`` at
    ``T = dkd_temperature``. TCKD is the KL between the binary (target class, the rest) distributions;
    NCKD the KL between the distributions over the non-target classes."""

    name: ClassVar[str] = "dkd"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd", "tckd", "nckd")

    dkd_alpha: float = param(1.0, "weight of TCKD (mdistiller CFG.DKD.ALPHA)", lo=0)
    dkd_beta: float = param(8.0, "weight of NCKD (mdistiller CFG.DKD.BETA)", lo=0)
    dkd_temperature: float = param(4.0, "softmax temperature of both KL terms, scaled by T^2 (CFG.DKD.T)",
                                   lo=0, lo_open=True)
    dkd_warmup: float = param(20.0, "epochs over which the DKD term ramps up linearly (CFG.DKD.WARMUP)",
                              lo=0, lo_open=True)
    dkd_target: str = param("label", "the target class: the ground-truth label (mdistiller's) or the teacher's "
                            "argmax (weak-to-strong without labels)", choices=DKD_TARGETS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dkd_target == "label" and self.gt_weight == 0:
            raise ValueError("dkd with gt_weight 0 would read the ground truth through its target class; "
                             "set objective.dkd_target=teacher for a run without labels")

    def warmup(self, epoch: int) -> float:
        """mdistiller's ``min(epoch / WARMUP, 1)`` with its 1-based epoch, i.e. ``(e + 1)`` for 0-based ``e``."""
        return min((epoch + 1) / self.dkd_warmup, 1.0)

    def target_classes(self, zt: Tensor, target: Tensor) -> Tensor:
        if self.dkd_target == "teacher":
            return zt.argmax(dim=-1)
        return target if target.dim() == 1 else target.argmax(dim=-1)  # a mixed / smoothed target: its top class

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor,
                 epoch: int = 0, epochs: int = 1) -> ObjectiveOutput:
        """The base's ground-truth term, plus DKD, whose split of the classes needs the target itself."""
        if teacher_logits is None:
            raise ValueError(f"objective {self.name!r} needs teacher logits")
        zs, zt = student_logits.float(), teacher_logits.float()
        ce = cross_entropy(zs, target).mean()
        terms: dict[str, Tensor] = {"gt": ce.detach()}
        tckd, nckd = dkd_terms(zs, zt, self.target_classes(zt, target), self.dkd_temperature)
        t2 = self.dkd_temperature ** 2
        dkd = self.warmup(epoch) * t2 * (self.dkd_alpha * tckd + self.dkd_beta * nckd).mean()
        terms["kd"] = dkd.detach()
        terms["tckd"], terms["nckd"] = (t2 * tckd).mean().detach(), (t2 * nckd).mean().detach()
        return ObjectiveOutput(self.gt_weight * ce + self.kd_weight * dkd, terms, None)


def dkd_terms(zs: Tensor, zt: Tensor, classes: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD (before ``T^2``), in log space.

    TCKD: ``KL((p_t(y), 1 - p_t(y)) || (p_s(y), 1 - p_s(y)))``, ``log(1 - p(y))`` as the logsumexp of the
    other classes' log-probabilities. NCKD: the KL of the softmaxes over the non-target classes
    (upstream subtracts 1000 from the target logit; here it is masked out exactly).
    """
    gt = F.one_hot(classes.long(), zs.shape[1]).bool()
    lp_s, lp_t = F.log_softmax(zs / temperature, -1), F.log_softmax(zt / temperature, -1)

    def binary(lp: Tensor) -> Tensor:
        return torch.stack([lp[gt], torch.logsumexp(lp.masked_fill(gt, float("-inf")), dim=-1)], dim=1)

    b_s, b_t = binary(lp_s), binary(lp_t)
    tckd = (b_t.exp() * (b_t - b_s)).sum(dim=-1)
    ln_s = F.log_softmax((zs / temperature).masked_fill(gt, float("-inf")), -1).masked_fill(gt, 0.0)
    ln_t = F.log_softmax((zt / temperature).masked_fill(gt, float("-inf")), -1).masked_fill(gt, 0.0)
    nckd = (ln_t.exp().masked_fill(gt, 0.0) * (ln_t - ln_s)).sum(dim=-1)
    return tckd, nckd
