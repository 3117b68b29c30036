"""End-of-epoch evaluation: top-1 accuracy (and agreement with the teacher) on a split's fixed view.

Evaluation replays view 0 of the run's policy (the fixed view: resize / centre crop, no
augmentation), sharded over the ranks and summed, so every process reports the same figure.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from pipeline.data.loader import ViewReplayer, crop_size_for, shard_batches, stream
from pipeline.engine.runtime import Dist, all_reduce_sum
from pipeline.data.sources.base import Source
from pipeline.student.specs import InputSpec
from pipeline.data.views import ViewPolicy, sample_params


def fixed_view_stream(src: Source, rep: ViewReplayer, policy: ViewPolicy, world: int = 1,
                      rank: int = 0) -> Iterator[Any]:
    """Batches of ``src``'s fixed view for this rank (the last, partial batch included)."""
    batches = shard_batches(np.arange(len(src)), rep.batch_size * world, rank, world, drop_last=False)
    return stream(src, batches, rep, lambda idx: sample_params(policy, idx, 0, src.sizes_of(idx)))


def fixed_view_replayer(src: Source, spec: InputSpec, batch_size: int, policy: ViewPolicy, device: str,
                        num_threads: int) -> ViewReplayer:
    return ViewReplayer(src.image_hw, [spec], batch_size, crop_size_for(policy, src), device, num_threads,
                        decode=src.encoded)


def predictions(model: nn.Module, src: Source, rep: ViewReplayer, policy: ViewPolicy) -> np.ndarray:
    """A model's argmax for every sample of ``src`` (one process)."""
    preds = np.empty(len(src), dtype=np.int64)
    with torch.no_grad():
        for b in fixed_view_stream(src, rep, policy):
            preds[b.indices] = model(b.inputs[0]).argmax(1).cpu().numpy()
    return preds


def accuracy(model: nn.Module, src: Source, rep: ViewReplayer, policy: ViewPolicy, dist: Dist,
             device: torch.device, memory_format: torch.memory_format,
             autocast: Callable[[], contextlib.AbstractContextManager[Any]],
             teacher_pred: np.ndarray | None = None) -> tuple[float, float | None]:
    """Top-1 accuracy over all ranks, and the fraction of predictions equal to ``teacher_pred`` when given."""
    model.eval()
    correct = agree = count = 0.0
    with torch.no_grad(), autocast():
        for b in fixed_view_stream(src, rep, policy, dist.world, dist.rank):
            pred = model(b.inputs[0].contiguous(memory_format=memory_format)).argmax(1)
            correct += (pred == b.labels).sum().item()
            if teacher_pred is not None:
                agree += float((pred.cpu().numpy() == teacher_pred[b.indices]).sum())
            count += len(b.indices)
    correct, agree, count = all_reduce_sum([correct, agree, count], device, dist)
    return correct / count, (agree / count if teacher_pred is not None else None)
