"""Sel-CL's loss terms (pre-training) and Sel-CL+'s (fine-tuning), as pure functions of tensors.

Upstream: ggjy/vision_weak_to_strong noisy_labels_learning/utils_sel/utils_noise.py ``train_uns`` /
``train_sel``, and ShikunLi/Sel-CL utils/losses.py, utils/utils_mixup.py, utils/NCECriterion.py
(the supervised terms are adapted from MOIT); fine-tuning: utils_sel/utils_plus.py ``train_mixup``
/ ``criterionMixBoot`` and utils_sel/kd_loss.py.

Epochs are 0-based here, as in ``pipeline.engine.run_loop``; upstream counts from 1 (``upstream = epoch + 1``).

Batch layout of the supervised terms: ``2B`` rows, view A (mixed with ``perm_a``, ``lam_a``) then
view B (``perm_b``, ``lam_b``). A mixed image ``i`` is mainly image ``i`` (``lam = max(lam, 1 -
lam)``) and partly image ``perm[i]``. Positives of row ``r`` (sample ``i``) among keys:

* major part (weight ``lam``): the other view of ``i`` (``unsup``) and every key whose sample is
  paired with ``i`` by the confident pairs, ``i`` itself excluded (``sup``);
* minor part (weight ``1 - lam``): keys whose sample is ``perm[i]`` (``unsup_mix``) and keys paired
  with ``perm[i]``, self-pair included (``sup_mix``), so ``perm[i]``'s own keys count twice, as
  upstream's masks have it; the anchor itself is never a key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- mixup


@dataclass(frozen=True)
class ViewMix:
    """The mixup draws of the two views of one batch."""

    perm_a: Tensor
    perm_b: Tensor
    lam_a: float
    lam_b: float

    def lam_vector(self, b: int, like: Tensor) -> Tensor:
        """``[2B]``: ``lam_a`` for view-A rows, ``lam_b`` for view-B rows (dtype and device of ``like``)."""
        kw = {"dtype": like.dtype, "device": like.device}
        return torch.cat([torch.full((b,), self.lam_a, **kw), torch.full((b,), self.lam_b, **kw)])


def mix_inputs(x: Tensor, alpha: float, rng: np.random.Generator) -> tuple[Tensor, Tensor, float]:
    """``(lam x + (1 - lam) x[perm], perm, lam)`` with ``lam = max(l, 1 - l)``, ``l ~ Beta(alpha, alpha)``.

    ``alpha <= 0``: no mix (``lam = 1``).
    Upstream ``mix_data_lab`` (ShikunLi/Sel-CL utils/utils_mixup.py); draws come from ``rng`` so a
    resumed run can repeat them.
    """
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], perm, lam


# ---------------------------------------------------------------- unsupervised InfoNCE


def unsup_contrastive_loss(q: Tensor, k: Tensor, memory: Tensor, temperature: float = 0.1) -> Tensor:
    """Per-sample InfoNCE ``[B]``: positive ``q_i . k_i``, negatives ``q_i . memory``, over ``temperature``.

    ``q``: query embeddings of view 1, ``k``: key (EMA) embeddings of view 2, both unmixed and
    L2-normalized; ``memory``: the :class:`~pipeline.scenarios.sel_cl.queue.KeyMemory` *before* ``k`` is enqueued.
    """
    pos = (q * k.detach()).sum(dim=1, keepdim=True)
    neg = q @ memory.detach().T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device), reduction="none")


# ---------------------------------------------------------------- masks


@dataclass
class ContrastMasks:
    """Float ``[2B, M]`` masks over keys: the four positive sets and which keys enter the denominator."""

    sup: Tensor
    unsup: Tensor
    sup_mix: Tensor
    unsup_mix: Tensor
    logits: Tensor


def batch_masks(pairs: Tensor, mix: ViewMix) -> ContrastMasks:
    """Masks of the ``2B`` batch rows against the ``2B`` batch keys; ``pairs``: ``[B, B]`` confident pairs of the batch."""
    b = pairs.shape[0]
    dev = pairs.device
    p = pairs.float()
    eye = torch.eye(b, device=dev)
    off_diag = 1.0 - torch.eye(2 * b, device=dev)
    sup = (p * (1.0 - eye)).repeat(2, 2) * off_diag
    unsup = eye.repeat(2, 2) * off_diag
    sup_mix = torch.cat([p[mix.perm_a], p[mix.perm_b]]).repeat(1, 2) * off_diag
    unsup_mix = torch.cat([eye[mix.perm_a], eye[mix.perm_b]]).repeat(1, 2) * off_diag
    return ContrastMasks(sup, unsup, sup_mix, unsup_mix, off_diag)


def memory_masks(pairs: Tensor, batch: ContrastMasks, mix: ViewMix, slot: tuple[int, int]) -> ContrastMasks:
    """Masks of the ``2B`` batch rows against the ``Q`` queue keys.

    ``pairs``: ``[B, Q]`` confident pairs of the batch samples with the queue entries' samples;
    ``slot``: where the batch itself sits in the queue (``SupQueue.last_slot``), which gets the
    batch masks (so the anchor's own key is excluded, its other view is a positive).
    """
    start, stop = slot
    if stop - start != batch.sup.shape[0]:
        raise ValueError(f"queue slot {slot} does not hold the {batch.sup.shape[0]} batch keys")
    p = pairs.float()
    q = p.shape[1]
    sup = p.repeat(2, 1)
    sup_mix = torch.cat([p[mix.perm_a], p[mix.perm_b]])
    unsup = torch.zeros_like(sup)
    unsup_mix = torch.zeros_like(sup)
    logits = torch.ones(sup.shape[0], q, device=p.device)
    for full, part in ((sup, batch.sup), (unsup, batch.unsup), (sup_mix, batch.sup_mix),
                       (unsup_mix, batch.unsup_mix), (logits, batch.logits)):
        full[:, start:stop] = part
    return ContrastMasks(sup, unsup, sup_mix, unsup_mix, logits)


def unsup_keep(batch: ContrastMasks, memory: ContrastMasks | None = None) -> Tensor:
    """``[B]`` bool: samples without confident positives, which keep the unsupervised InfoNCE term.

    Upstream: positives counted on the view-A rows; ``< 1`` without the queue, ``< 2`` with it
    (the queue masks repeat the batch's own positives in its slot).
    """
    b = batch.sup.shape[0] // 2
    n = batch.sup[:b].sum(1)
    if memory is None:
        return n < 1
    return (n + memory.sup[:b].sum(1)) < 2


# ---------------------------------------------------------------- supervised terms


def sup_contrastive_loss(anchors: Tensor, keys: Tensor, masks: ContrastMasks, mix: ViewMix,
                         temperature: float = 0.1) -> Tensor:
    """Mixup supervised contrastive loss over confident pairs (upstream ``Supervised_ContrastiveLearning_loss``).

    Row ``r``: ``-(lam P1 + (1 - lam) P2)`` with ``P = sum_j w_j log p_rj / sum_j w_j``, ``w`` the
    major (``sup + unsup``) or minor (``sup_mix + unsup_mix``) positives and ``log p_rj = s_rj / t -
    log sum_{l in logits mask} exp(s_rl / t)``. The two views' rows are averaged per sample, samples
    with no confident positive (view-A ``sup`` row empty) count 0, and the batch mean is returned.
    ``keys`` is ``anchors`` for the in-batch term, the queue's EMA embeddings for the queue term.
    """
    b = anchors.shape[0] // 2
    logits = anchors @ keys.T / temperature
    lse = torch.logsumexp(logits.masked_fill(masks.logits <= 0, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - lse
    w1 = masks.sup + masks.unsup
    w2 = masks.sup_mix + masks.unsup_mix
    p1 = (w1 * log_prob).sum(1) / w1.sum(1).clamp_min(1.0)
    p2 = (w2 * log_prob).sum(1) / w2.sum(1).clamp_min(1.0)
    lam = mix.lam_vector(b, anchors)
    per_sample = (-(lam * p1 + (1.0 - lam) * p2)).view(2, b).mean(0)
    has_pos = (masks.sup[:b].sum(1) > 0).to(per_sample.dtype)
    return (per_sample * has_pos).mean()


def similarity_loss(probs: Tensor, key_probs: Tensor, masks: ContrastMasks, mix: ViewMix,
                    eps: float = 1e-7) -> Tensor:
    """BCE of the class-probability similarity ``s = p_r . p_j`` against the pair masks (upstream ``Simi_loss``).

    Entry ``(r, j)``: ``lam BCE(w1_rj, s_rj) + (1 - lam) BCE(w2_rj, s_rj)``, ``BCE(w, s) = -w log(s + eps)
    - (1 - w) log(1 - s + eps)``, zero outside the logits mask; the mean over all ``2B x M`` entries.
    """
    b = probs.shape[0] // 2
    s = probs @ key_probs.T
    log_s, log_1s = torch.log(s + eps), torch.log(1.0 - s + eps)
    w1 = masks.sup + masks.unsup
    w2 = masks.sup_mix + masks.unsup_mix
    lam = mix.lam_vector(b, probs)[:, None]
    bce1 = -w1 * log_s - (1.0 - w1) * log_1s
    bce2 = -w2 * log_s - (1.0 - w2) * log_1s
    return (masks.logits * (lam * bce1 + (1.0 - lam) * bce2)).mean()


def mixup_ce(logits: Tensor, labels: Tensor, mix: ViewMix) -> Tensor:
    """Mixup cross-entropy of both views ``[2B, C]`` against ``labels`` ``[B]`` (upstream ``ClassificationLoss``)."""
    b = labels.shape[0]
    y1 = torch.cat([labels, labels])
    y2 = torch.cat([labels[mix.perm_a], labels[mix.perm_b]])
    lam = mix.lam_vector(b, logits)
    ce1 = F.cross_entropy(logits, y1, reduction="none")
    ce2 = F.cross_entropy(logits, y2, reduction="none")
    return (lam * ce1 + (1.0 - lam) * ce2).mean()


# ---------------------------------------------------------------- one Sel-CL step


@dataclass
class QueueBatch:
    """What the supervised queue contributes to a step (``SupQueue.get()`` after this batch's enqueue)."""

    feats: Tensor   # [Q, d] EMA embeddings
    probs: Tensor   # [Q, C] EMA softmax probabilities
    pairs: Tensor   # [B, Q] confident pairs of the batch samples with the queue entries' samples
    slot: tuple[int, int]


def use_sup_queue(epoch: int, begin: int = 3) -> bool:
    """Whether the queue terms are on at 0-based ``epoch`` (upstream ``epoch > args.sup_queue_begin``)."""
    return epoch + 1 > begin


def warmup_losses(uns_per_sample: Tensor) -> dict[str, Tensor]:
    """The unsupervised warm-up step's loss (upstream ``train_uns``): the batch mean of InfoNCE."""
    uns = uns_per_sample.mean()
    return {"uns": uns, "total": uns}


def sel_cl_losses(*, uns_per_sample: Tensor, embeds: Tensor, probs: Tensor, pairs: Tensor, mix: ViewMix,
                  cls_logits: Tensor, cls_labels: Tensor, cls_mix: ViewMix, queue: QueueBatch | None = None,
                  sup_t: float = 0.1, lambda_c: float = 1.0, lambda_s: float = 0.01) -> dict[str, Tensor]:
    """All Sel-CL terms of one step after the warm-up (upstream ``train_sel``).

    Inputs: ``uns_per_sample`` from :func:`unsup_contrastive_loss`; ``embeds`` ``[2B, d]`` / ``probs``
    ``[2B, C]``: query embeddings and softmax of the two mixed views; ``pairs`` ``[B, B]``: confident
    pairs within the batch; ``cls_logits`` ``[2B', C]``: logits of the two mixed views of a batch
    drawn from the selected examples, with its labels and mix. Returns ``uns`` (InfoNCE of the
    samples without confident positives, averaged over the whole batch), ``sup_con`` (batch +
    queue), ``ce``, ``sim`` (batch + queue), ``total = uns + sup_con + lambda_c ce`` and
    ``sim_weighted = lambda_s sim``. Upstream backpropagates ``sim_weighted`` separately with
    gradient clipping: use :func:`sel_cl_backward`.
    """
    bm = batch_masks(pairs, mix)
    sup = sup_contrastive_loss(embeds, embeds, bm, mix, sup_t)
    sim = similarity_loss(probs, probs, bm, mix)
    mm = None
    if queue is not None:
        mm = memory_masks(queue.pairs, bm, mix, queue.slot)
        sup = sup + sup_contrastive_loss(embeds, queue.feats.detach(), mm, mix, sup_t)
        sim = sim + similarity_loss(probs, queue.probs.detach(), mm, mix)
    keep = unsup_keep(bm, mm).to(uns_per_sample.dtype)
    uns = (keep * uns_per_sample).mean()
    ce = mixup_ce(cls_logits, cls_labels, cls_mix)
    return {"uns": uns, "sup_con": sup, "ce": ce, "sim": sim, "total": uns + sup + lambda_c * ce,
            "sim_weighted": lambda_s * sim}


def sel_cl_backward(losses: dict[str, Tensor], parameters: Iterable[torch.nn.Parameter], *,
                    lambda_s: float = 0.01, sim_clip: float = 0.25) -> None:
    """Upstream's two backward passes: ``lambda_s sim`` first, its gradient clipped to norm ``sim_clip``, then ``total``.

    Call right after ``zero_grad`` (the clip applies to whatever gradient is there). The step's
    gradient is ``clip(grad(lambda_s sim)) + grad(total)``.
    """
    params = [p for p in parameters if p.requires_grad]
    if lambda_s > 0:
        losses["sim_weighted"].backward(retain_graph=True)
        torch.nn.utils.clip_grad_norm_(params, max_norm=sim_clip, norm_type=2)
    losses["total"].backward()


# ---------------------------------------------------------------- Sel-CL+ fine-tuning


def label_correction_active(epoch: int, start: int = 30) -> bool:
    """Whether 0-based ``epoch`` corrects labels (upstream ``epoch > args.startLabelCorrection``: from the 31st epoch)."""
    return epoch + 1 > start


def corrected_targets(labels: Tensor, clean_logits: Tensor, epoch: int, *, start: int = 30,
                      bootstrap: float = 0.2) -> Tensor:
    """Sel-CL+'s label correction as soft targets ``[B, C]`` (upstream ``criterionMixBoot``).

    Before the correction starts: one-hot noisy labels. After: hard bootstrapping,
    ``(1 - B) onehot(y) + B onehot(argmax clean_logits)`` with ``B = 0.2``, where ``clean_logits``
    are the model's own detached logits on the un-augmented image. No confidence threshold: every
    label is corrected, softly.
    """
    c, dt = clean_logits.shape[1], clean_logits.dtype
    t = F.one_hot(labels.long(), c).to(dt)
    if not label_correction_active(epoch, start):
        return t
    z = clean_logits.detach().argmax(dim=1)
    return (1.0 - bootstrap) * t + bootstrap * F.one_hot(z, c).to(dt)


def sel_cl_plus_ce(logits: Tensor, clean_logits: Tensor, labels: Tensor, perm: Tensor, lam: float, epoch: int, *,
                   start: int = 30, bootstrap: float = 0.2) -> Tensor:
    """Mixup cross-entropy against the (corrected) targets: ``mean(lam CE(z, T) + (1 - lam) CE(z, T[perm]))``."""
    t = corrected_targets(labels, clean_logits, epoch, start=start, bootstrap=bootstrap)
    logp = F.log_softmax(logits, dim=1)
    ce1 = -(t * logp).sum(1)
    ce2 = -(t[perm] * logp).sum(1)
    return (lam * ce1 + (1.0 - lam) * ce2).mean()


def adaptconf_kd(student_logits: Tensor, teacher_logits: Tensor, epoch: int, epochs: int = 70, *,
                 temperature: float = 1.0, threshold: float = 0.5, weight: float = 1.0,
                 warmup_rate: float = 0.25) -> tuple[Tensor, Tensor]:
    """``(weight * mean((1 - beta) T^2 KL + beta CE(z_s, argmax z_s)), beta)``: the AdaptConf KD term of Sel-CL+.

    ``beta = sigmoid((CE(z_s, argmax z_s) - CE(z_s, argmax z_t)) / threshold)``, ramped by
    ``n / (0.25 (E + 1))`` while ``n = epoch + 1 < int(0.25 (E + 1))`` (upstream kd_loss.py
    ``adapt_conf_loss`` called with ``max_epoch = args.epoch + 1``). Computed by the project's
    ``adaptconf`` objective (``pipeline.objectives``, ``warmup_style='sel_cl'``).
    """
    from pipeline.objectives import build_objective

    obj = build_objective("adaptconf", gt_weight=0.0, kd_weight=weight, kd_temperature=temperature,
                          threshold=threshold, warmup_rate=warmup_rate, warmup_style="sel_cl")
    out = obj(student_logits, teacher_logits, teacher_logits.detach().argmax(dim=1), epoch=epoch, epochs=epochs)
    assert out.sample_weight is not None
    return out.total, out.sample_weight


def sel_cl_plus_losses(*, logits: Tensor, clean_logits: Tensor, labels: Tensor, perm: Tensor, lam: float, epoch: int,
                       epochs: int = 70, teacher_logits: Tensor | None = None, kd_temperature: float = 1.0,
                       kd_threshold: float = 0.5, kd_weight: float = 1.0, start: int = 30,
                       bootstrap: float = 0.2) -> dict[str, Tensor]:
    """One Sel-CL+ step (upstream ``train_mixup``): ``ce`` (+ ``kd`` when a teacher is given) and ``total``.

    ``logits``: student on the mixed augmented image; ``clean_logits``: student on the
    un-augmented image (train mode, detached); ``teacher_logits``: teacher on the same mixed image.
    """
    ce = sel_cl_plus_ce(logits, clean_logits, labels, perm, lam, epoch, start=start, bootstrap=bootstrap)
    out = {"ce": ce, "total": ce}
    if teacher_logits is not None:
        kd, _ = adaptconf_kd(logits, teacher_logits.detach(), epoch, epochs, temperature=kd_temperature,
                             threshold=kd_threshold, weight=kd_weight)
        out["kd"] = kd
        out["total"] = ce + kd
    return out
