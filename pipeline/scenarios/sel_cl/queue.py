"""Sel-CL's two memories and the momentum (EMA) key encoder update.

Sel-CL keeps two independent memories, both filled with the key (EMA) encoder's outputs:

* :class:`KeyMemory`, the MoCo negatives of the unsupervised InfoNCE term: ``size`` keys (10,000),
  written slot by slot modulo ``size`` (upstream: ShikunLi/Sel-CL utils/MemoryMoCo.py, used by
  ggjy/vision_weak_to_strong noisy_labels_learning/CIFAR/train_Sel-CL.py as ``uns_contrast``).
* :class:`SupQueue`, the memory of the supervised contrastive and similarity terms: EMA embeddings,
  EMA softmax probabilities and dataset indices of both mixed views, ``queue_per_class *
  num_classes * 2`` slots (upstream: ShikunLi/Sel-CL utils/queue_with_pro.py). It stores no labels:
  which queue entries are positives is looked up from the epoch's selected pairs by dataset index.
  It is a plain FIFO; "per class" only sizes it, upstream has no class-balanced queue.

Both hold their full state in :meth:`state_dict` so a resumed run continues bit-exactly.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


@torch.no_grad()
def momentum_update(key_model: nn.Module, query_model: nn.Module, m: float) -> None:
    """``key = m * key + (1 - m) * query`` over the parameters only (buffers, e.g. BN stats, untouched).

    ``m = 0`` copies the query weights (how upstream initializes the key model); Sel-CL uses
    ``m = 0.999`` after every optimizer step (upstream: ShikunLi/Sel-CL utils/other_utils.py
    ``moment_update``; ``--alpha_moving``).
    """
    for pk, pq in zip(key_model.parameters(), query_model.parameters(), strict=True):
        pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)


class KeyMemory:
    """MoCo memory of negatives for the unsupervised InfoNCE loss (upstream ``MemoryMoCo``)."""

    def __init__(self, dim: int, size: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> None:
        """Memory filled uniformly in ``[-s, s]``, ``s = 1 / sqrt(dim / 3)``, as upstream initializes it."""
        stdv = 1.0 / math.sqrt(dim / 3)
        self.size = size
        self.memory = (torch.rand(size, dim, generator=generator) * (2 * stdv) - stdv).to(device)
        self.index = 0

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` at slots ``(index + i) mod size``; ``index`` advances modulo ``size``."""
        n = keys.shape[0]
        slots = (torch.arange(n, device=self.memory.device) + self.index) % self.size
        self.memory.index_copy_(0, slots, keys.detach().to(self.memory.dtype))
        self.index = (self.index + n) % self.size

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.clone(), "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["memory"].shape) != tuple(self.memory.shape):
            raise ValueError(f"KeyMemory shape {tuple(state['memory'].shape)} != {tuple(self.memory.shape)}")
        self.memory.copy_(state["memory"])
        self.index = int(state["index"])


class SupQueue:
    """FIFO of EMA embeddings, EMA probabilities and dataset indices (upstream ``queue_with_pro``).

    Enqueue semantics are upstream's exactly: a write that fits goes to ``[ptr, ptr + n)`` and
    advances ``ptr`` (which may then equal ``size``); a write that does not fit goes to the *last*
    ``n`` slots and resets ``ptr`` to 0. The queue is full once its last slot has been written.
    :attr:`last_slot` is where the latest write went, i.e. where the current batch sits in
    :meth:`get` (upstream recomputes it as ``[ptr - 2B, ptr)`` or ``[-2B:]`` when ``ptr == 0``).
    """

    def __init__(self, size: int, dim: int, num_classes: int, *, device: torch.device | str | None = None) -> None:
        self.size = size
        self.feats = torch.full((size, dim), -1.0, device=device)
        self.probs = torch.full((size, num_classes), -1.0, device=device)
        self.indices = torch.full((size,), -1, dtype=torch.long, device=device)
        self.ptr = 0
        self.last_slot: tuple[int, int] = (0, 0)

    @classmethod
    def for_classes(cls, queue_per_class: int, num_classes: int, dim: int, *,
                    device: torch.device | str | None = None) -> "SupQueue":
        """Upstream sizing: ``queue_per_class * num_classes * 2`` (two views per sample)."""
        return cls(queue_per_class * num_classes * 2, dim, num_classes, device=device)

    @property
    def is_full(self) -> bool:
        return bool(self.indices[-1].item() != -1)

    def get(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(feats, probs, indices)``: all slots once full, else the ``ptr`` written ones."""
        if self.is_full:
            return self.feats, self.probs, self.indices
        return self.feats[:self.ptr], self.probs[:self.ptr], self.indices[:self.ptr]

    @torch.no_grad()
    def enqueue(self, feats: Tensor, probs: Tensor, indices: Tensor) -> None:
        """Write one batch (upstream ``enqueue_dequeue``); ``n`` must not exceed ``size``."""
        n = int(indices.shape[0])
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} entries into a queue of {self.size}")
        if self.ptr + n > self.size:
            start, self.ptr = self.size - n, 0
        else:
            start = self.ptr
            self.ptr += n
        self.feats[start:start + n] = feats.detach().to(self.feats.dtype)
        self.probs[start:start + n] = probs.detach().to(self.probs.dtype)
        self.indices[start:start + n] = indices.detach().long()
        self.last_slot = (start, start + n)

    def state_dict(self) -> dict[str, Any]:
        return {"feats": self.feats.clone(), "probs": self.probs.clone(), "indices": self.indices.clone(),
                "ptr": self.ptr, "last_slot": list(self.last_slot)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["feats"].shape) != tuple(self.feats.shape) or \
                tuple(state["probs"].shape) != tuple(self.probs.shape):
            raise ValueError("SupQueue state does not match this queue's size, dim or classes")
        self.feats.copy_(state["feats"])
        self.probs.copy_(state["probs"])
        self.indices.copy_(state["indices"])
        self.ptr = int(state["ptr"])
        self.last_slot = (int(state["last_slot"][0]), int(state["last_slot"][1]))
