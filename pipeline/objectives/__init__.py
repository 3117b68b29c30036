"""Training objectives in a registry: vanilla, kd, augconf and adaptconf, as docs/design.md defines them.

An objective is one class registered with :func:`register_objective` (as timm's
``@register_model`` is for models). Its parameters are its dataclass fields, declared with
:func:`param` (default, range or choices, one line of doc): the ``objective`` config section and
its validation are built from them (``pipeline.config.schema``). It declares its logged ``terms`` and the
name of its per-sample weight (``sample_weight``; ``weight_range`` when that weight varies per
sample and is worth a histogram). Adding an objective is one class.

Each objective maps ``(student_logits, teacher_logits, target, epoch, epochs)`` to an
:class:`ObjectiveOutput` holding the scalar to backpropagate, detached per-term scalars for
logging and the per-sample weight (AdaptConf's beta, AugConf's alpha).

``target`` is either int64 class indices ``[B]`` or a soft target ``[B, C]`` (mixup/cutmix,
label smoothing). Teacher logits may be float16 (the store's dtype); every computation runs in
float32 and is overflow-free for logits of any finite magnitude (log-softmax, sigmoid form).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

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


def param(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A parameter of an objective: its default, a one-line doc, and the values it accepts."""
    return field(default=default, metadata={"doc": doc, "range": (lo, hi, lo_open, hi_open), "choices": choices})


@dataclass
class Objective:
    """The base: ground-truth cross-entropy only; subclasses add parameters (fields) and terms."""

    name: ClassVar[str] = ""
    terms: ClassVar[tuple[str, ...]] = ("gt",)
    sample_weight: ClassVar[str | None] = None
    weight_range: ClassVar[tuple[float, float] | None] = None
    needs_teacher: ClassVar[bool] = False

    gt_weight: float = param(1.0, "weight of the ground-truth cross-entropy", lo=0)

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = check_param(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"{self.name} {f.name} {problem}")

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor,
                 epoch: int = 0, epochs: int = 1) -> ObjectiveOutput:
        zs = student_logits.float()
        ce = cross_entropy(zs, target).mean()
        terms: dict[str, Tensor] = {"gt": ce.detach()}
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"objective {self.name!r} needs teacher logits")
        zt = None if teacher_logits is None else teacher_logits.float()
        return self.combine(zs, zt, self.gt_weight * ce, terms, epoch, epochs)

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        """The objective's own part, given the weighted ground-truth term ``gt`` (float32 logits)."""
        return ObjectiveOutput(gt, terms, None)


def check_param(f: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for the parameter ``f`` (a dataclass field made by :func:`param`), or None."""
    choices = f.metadata.get("choices")
    if choices is not None:
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"
    lo, hi, lo_open, hi_open = f.metadata.get("range", (None, None, False, False))
    if (lo is not None and (value <= lo if lo_open else value < lo)) or \
            (hi is not None and (value >= hi if hi_open else value > hi)):
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        else:
            want = f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}"
        return f"must be {want}, got {value:g}"
    return None


OBJECTIVES: dict[str, type[Objective]] = {}
O = TypeVar("O", bound=type[Objective])


def register_objective(cls: O) -> O:
    """Class decorator: make an :class:`Objective` subclass available by its ``name``."""
    if not cls.name or cls.name in OBJECTIVES:
        raise ValueError(f"objective class {cls.__name__} needs a new name, got {cls.name!r}")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_params() -> dict[str, Any]:
    """Every parameter of every registered objective, by name (the ``objective`` config section's keys)."""
    out: dict[str, Any] = {}
    for cls in OBJECTIVES.values():
        for f in fields(cls):
            if f.name in out and out[f.name].default != f.default:
                raise ValueError(f"objective parameter {f.name} has two defaults ({out[f.name].default}, {f.default})")
            out.setdefault(f.name, f)
    return out


@register_objective
@dataclass
class Vanilla(Objective):
    """Cross-entropy on the (possibly mixed or smoothed) ground truth: weak teachers, ceilings, baselines."""

    name: ClassVar[str] = "vanilla"


@register_objective
@dataclass
class KD(Objective):
    """``gt_weight CE + kd_weight T^2 KL(p_t || p_s)`` with temperature ``T``."""

    name: ClassVar[str] = "kd"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd")
    needs_teacher: ClassVar[bool] = True

    kd_temperature: float = param(1.0, "softmax temperature T of the KL term (scaled by T^2)", lo=0, lo_open=True)
    kd_weight: float = param(1.0, "weight of the teacher's part of the loss", lo=0)

    def kd_term(self, zs: Tensor, zt: Tensor, terms: dict[str, Tensor]) -> Tensor:
        """Per-sample ``T^2 KL``; logs its mean as ``kd``."""
        kl = self.kd_temperature ** 2 * kl_per_sample(zs, zt, self.kd_temperature)
        terms["kd"] = kl.mean().detach()
        return kl

    def kd_and_confidence(self, zs: Tensor, zt: Tensor, terms: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-sample ``T^2 KL`` and the student's self-confidence ``CE(z_s, argmax z_s)``, logged as ``kd``, ``align``."""
        kl = self.kd_term(zs, zt, terms)
        c_s = self_confidence(zs)
        terms["align"] = c_s.mean().detach()
        return kl, c_s

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        return ObjectiveOutput(gt + self.kd_weight * self.kd_term(zs, zt, terms).mean(), terms, None)


@register_objective
@dataclass
class AugConf(KD):
    """KD mixed with the student's own hard label: ``(1 - alpha) T^2 KL + alpha CE(z_s, argmax z_s)``,
    alpha ramped from 0 to ``max_weight`` over the first ``rate`` of the epochs."""

    name: ClassVar[str] = "augconf"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd", "align")
    sample_weight: ClassVar[str | None] = "alpha"

    rate: float = param(0.3, "share of the epochs over which alpha ramps up (--superalignment-rate)",
                        lo=0, lo_open=True, hi=1)
    max_weight: float = param(0.5, "alpha's cap (--superalignment-threshold)", lo=0, hi=1)

    def augconf_alpha(self, epoch: int, epochs: int) -> float:
        """``alpha = e / (E r) * theta`` while ``e < int(E r)``, else ``theta`` (0-based ``e``).

        As the paper's classification/distillers/adaptconf.py AugConf, whose ``args.epoch`` is train.py's
        0-based epoch; ``r`` = ``--superalignment-rate`` (0.3), ``theta`` = ``--superalignment-threshold`` (0.5).
        """
        ramp = int(epochs * self.rate)
        if epoch < ramp:
            return epoch / (epochs * self.rate) * self.max_weight
        return self.max_weight

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        kl, c_s = self.kd_and_confidence(zs, zt, terms)
        alpha = self.augconf_alpha(epoch, epochs)
        weak = (1 - alpha) * kl.mean() + alpha * c_s.mean()
        return ObjectiveOutput(gt + self.kd_weight * weak, terms, torch.full_like(c_s, alpha).detach())


@register_objective
@dataclass
class AdaptConf(KD):
    """Per-sample ``(1 - beta) T^2 KL + beta CE(z_s, argmax z_s)`` with
    ``beta = sigmoid((CE(z_s, argmax z_s) - CE(z_s, argmax z_t)) / threshold)``, in (0, 1)."""

    name: ClassVar[str] = "adaptconf"
    terms: ClassVar[tuple[str, ...]] = ("gt", "kd", "align")
    sample_weight: ClassVar[str | None] = "beta"
    weight_range: ClassVar[tuple[float, float] | None] = (0.0, 0.5)  # beta's usual range (histogram bins)

    threshold: float = param(0.5, "temperature of beta's sigmoid (--superalignment-threshold)", lo=0, lo_open=True)
    warmup_rate: float = param(0.0, "share of the epochs over which beta ramps up (0: off)", lo=0, hi=1)
    warmup_style: str = param("few_shot", "which upstream call of the warm-up to reproduce", choices=WARMUP_STYLES)

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

    def combine(self, zs: Tensor, zt: Tensor | None, gt: Tensor, terms: dict[str, Tensor], epoch: int,
                epochs: int) -> ObjectiveOutput:
        assert zt is not None
        kl, c_s = self.kd_and_confidence(zs, zt, terms)
        c_t = cross_entropy(zs, zt.argmax(dim=-1))
        beta = torch.sigmoid((c_s - c_t).detach() / self.threshold) * self.adaptconf_warmup(epoch, epochs)
        weak = ((1 - beta) * kl + beta * c_s).mean()
        return ObjectiveOutput(gt + self.kd_weight * weak, terms, beta)


def build_objective(name: str, **params: Any) -> Objective:
    """``build_objective("adaptconf", threshold=0.5)(zs, zt, y, epoch=e, epochs=E)``.

    ``params`` may hold any registered objective's parameters (the flat ``objective`` config
    section); the named objective takes its own and ignores the others'. Defaults are the paper's
    code: AugConf's ``rate`` 0.3 and ``max_weight`` 0.5 (classification/train.py's
    ``--superalignment-rate`` / ``--superalignment-threshold``, read by distillers/adaptconf.py).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    unknown = sorted(set(params) - set(objective_params()))
    if unknown:
        raise ValueError(f"unknown objective parameter {unknown[0]!r}; valid: {', '.join(objective_params())}")
    cls = OBJECTIVES[name]
    own = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in own})


# the comparison objectives register themselves on import (they subclass KD above)
from pipeline.objectives import baselines as _baselines  # noqa: E402,F401
