"""One Sel-CL pre-training step's forward passes and losses, and the whole-set passes around it.

The network is the backbone (any registered model: ``forward_features`` / ``forward_head``) with
its own classifier plus a linear projection to L2-normalized ``low_dim`` embeddings (upstream's
PreActResNet ``linear2`` + ``head``); the key encoder is an EMA copy of all of it whose BatchNorm
layers use batch statistics (upstream ``set_bn_train``). The functions here run the forwards and
fill the memories in upstream's order (ggjy/vision_weak_to_strong noisy_labels_learning/utils_sel/
utils_noise.py ``train_uns`` / ``train_sel``) and return the loss terms; the caller steps the optimizer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.scenarios.sel_cl.losses import QueueBatch, ViewMix, mix_inputs, sel_cl_losses, unsup_contrastive_loss, use_sup_queue
from pipeline.scenarios.sel_cl.queue import KeyMemory, SupQueue
from pipeline.scenarios.sel_cl.selection import PairSelection


class SelCLNet(nn.Module):
    """Backbone (with its classifier) + linear projection head: ``forward(x) -> (logits, embeddings)``."""

    def __init__(self, backbone: nn.Module, low_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.projection = nn.Linear(width, low_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return self.backbone.get_classifier()(pooled), F.normalize(self.projection(pooled), dim=1)


def key_encoder(net: SelCLNet) -> SelCLNet:
    """A frozen copy of ``net`` (upstream copies the weights with ``moment_update(m=0)``), BN on batch statistics."""
    key = copy.deepcopy(net).requires_grad_(False)
    set_bn_train(key)
    return key


def set_bn_train(model: nn.Module) -> None:
    """Eval mode except BatchNorm layers, which normalize with the batch's statistics (upstream ``set_bn_train``)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()


@dataclass(frozen=True)
class StepConfig:
    """The ``sel_cl`` values a step reads."""

    mixup_alpha: float
    uns_t: float
    sup_t: float
    lambda_c: float
    lambda_s: float
    sup_queue_begin: int


@dataclass
class Memories:
    """The key encoder and both memories it fills."""

    key: SelCLNet
    keys: KeyMemory
    queue: SupQueue


def _uns(net: SelCLNet, mem: Memories, x1: Tensor, x2: Tensor, t: float) -> Tensor:
    """Per-sample InfoNCE of view 1 (query) against view 2 (key) and the MoCo memory, then enqueue the keys."""
    q = net(x1)[1]
    with torch.no_grad():
        k = mem.key(x2)[1]
    uns = unsup_contrastive_loss(q, k, mem.keys.memory.clone(), t)  # the enqueue below writes in place
    mem.keys.enqueue(k)
    return uns


def _mix(x1: Tensor, x2: Tensor, alpha: float, rng: np.random.Generator) -> tuple[Tensor, Tensor, ViewMix]:
    xa, perm_a, lam_a = mix_inputs(x1, alpha, rng)
    xb, perm_b, lam_b = mix_inputs(x2, alpha, rng)
    return xa, xb, ViewMix(perm_a, perm_b, lam_a, lam_b)


@torch.no_grad()
def _enqueue_keys(mem: Memories, xa: Tensor, xb: Tensor, idx: Tensor) -> None:
    """Key embeddings and softmax of both mixed views into the supervised queue (upstream: before the losses)."""
    la, ea = mem.key(xa)
    lb, eb = mem.key(xb)
    mem.queue.enqueue(torch.cat([ea, eb]), torch.cat([la, lb]).softmax(1), torch.cat([idx, idx]))


def warmup_step(net: SelCLNet, mem: Memories, x1: Tensor, x2: Tensor, idx: Tensor, cfg: StepConfig,
                rng: np.random.Generator) -> dict[str, Tensor]:
    """Upstream ``train_uns``: InfoNCE only; the mixed views' keys still fill the supervised queue."""
    uns = _uns(net, mem, x1, x2, cfg.uns_t).mean()
    xa, xb, _ = _mix(x1, x2, cfg.mixup_alpha, rng)
    _enqueue_keys(mem, xa, xb, idx)
    return {"uns": uns, "total": uns}


def sel_cl_step(net: SelCLNet, mem: Memories, pairs: PairSelection, x1: Tensor, x2: Tensor, idx: Tensor,
                cls_views: Callable[[], tuple[Tensor, Tensor, Tensor]], epoch: int, cfg: StepConfig,
                rng: np.random.Generator) -> dict[str, Tensor]:
    """Upstream ``train_sel``: every term of :func:`~pipeline.scenarios.sel_cl.losses.sel_cl_losses`.

    ``cls_views()`` gives the two views and noisy labels of the classification batch drawn from the
    selected examples; it is called after the contrastive forwards, as upstream draws it.
    """
    uns = _uns(net, mem, x1, x2, cfg.uns_t)
    xa, xb, mix = _mix(x1, x2, cfg.mixup_alpha, rng)
    la, ea = net(xa)
    lb, eb = net(xb)
    _enqueue_keys(mem, xa, xb, idx)
    queue = None
    if use_sup_queue(epoch, cfg.sup_queue_begin):
        feats, probs, qidx = mem.queue.get()
        queue = QueueBatch(feats, probs, pairs.mask(idx, qidx), mem.queue.last_slot)
    ca, cb, cls_labels = cls_views()
    cxa, cxb, cls_mix = _mix(ca, cb, cfg.mixup_alpha, rng)
    cls_logits = torch.cat([net(cxa)[0], net(cxb)[0]])
    return sel_cl_losses(uns_per_sample=uns, embeds=torch.cat([ea, eb]), probs=torch.cat([la, lb]).softmax(1),
                         pairs=pairs.mask(idx, idx), mix=mix, cls_logits=cls_logits, cls_labels=cls_labels,
                         cls_mix=cls_mix, queue=queue, sup_t=cfg.sup_t, lambda_c=cfg.lambda_c, lambda_s=cfg.lambda_s)


@torch.no_grad()
def embed_all(net: SelCLNet, n: int, batch_size: int, inputs: Callable[[np.ndarray], Tensor]) -> Tensor:
    """``[n, low_dim]`` embeddings of rows ``0..n-1`` in eval mode (upstream ``pair_selection``'s test-transform pass)."""
    net.eval()
    out = [net(inputs(np.arange(s, min(s + batch_size, n))))[1] for s in range(0, n, batch_size)]
    return torch.cat(out)


@torch.no_grad()
def accuracy(model: nn.Module, labels: np.ndarray, batch_size: int, inputs: Callable[[np.ndarray], Tensor]) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on rows ``0..len(labels)-1``."""
    model.eval()
    n, hits = len(labels), 0
    for s in range(0, n, batch_size):
        rows = np.arange(s, min(s + batch_size, n))
        pred = model(inputs(rows)).argmax(1).cpu().numpy()
        hits += int((pred == labels[rows]).sum())
    return hits / n
