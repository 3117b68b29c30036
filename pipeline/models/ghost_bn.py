"""Ghost-batch BatchNorm: the batch-norm statistic of the paper's multi-GPU ``nn.DataParallel`` runs, on one device.

The paper's few-shot code (github.com/ggjy/vision_weak_to_strong, ``few_shot_leaerning/``) trains with
``nn.DataParallel``: the classifier stage on 4 GPUs (README: ``train_classifier.py ... --gpu 0,1,2,3``,
``batch_size: 128`` in ``config/classifier/train_classifier_mini*.yaml``), the meta stage on 2 (README:
"Meta-Baseline uses half of the GPUs", ``--gpu 0,1``; ``ep_per_batch: 4`` in ``config/meta/train_meta_mini*.yaml``).
DataParallel scatters every input along dim 0 into ``torch.chunk(x, n_gpu)`` pieces (chunks of
``ceil(N / n_gpu)``) and runs one replica per piece, so each replica's BatchNorm normalizes over its own
piece: 32 images in the classifier stage; in the meta stage ``MetaBaseline.forward(x_shot, x_query)``
gets 2 of the 4 episodes' supports and the same 2 episodes' queries, and concatenates them before
its encoder call, so BN sees the 2 * 5 * (1 + 15) = 160 images of 2 whole episodes (episodes 0-1 on
GPU 0, 2-3 on GPU 1).

:func:`ghost_batch_norm` reproduces this on one device: in training mode every ``nn.BatchNorm1d/2d/3d``
of a model normalizes ``x.split(size)`` (consecutive chunks along dim 0, the order and sizes of
DataParallel's scatter when ``size = ceil(N / n_gpu)``) each with its own batch mean and variance and
concatenates the results. That is exactly what per-replica BN computes; every other layer of these
backbones is per-sample, so the whole forward (and its gradient) equals DataParallel's.

Running statistics: DataParallel re-replicates the module at every forward; only replica 0's buffers
share storage with the module (the ``nn.DataParallel`` docstring), so the running mean/var (and
``num_batches_tracked``) are updated once per forward, from chunk 0 only, and the other replicas'
updates are lost. The ghost layers do the same: chunk 0 goes through BatchNorm's own forward (running
stats and counter updated as usual), the other chunks use their batch statistics without touching
the buffers.

Eval mode, a batch of at most ``size`` images and ``size = 0`` are plain BatchNorm. Under DDP (no
SyncBatchNorm) each rank already normalizes over its own batch, and DDP's ``broadcast_buffers``
copies rank 0's buffers to the other ranks at every forward, i.e. rank 0's running stats are kept,
as DataParallel keeps replica 0's; so when the per-rank batch equals ``size`` (128 over 4 ranks, 32 each)
nothing is split, and larger per-rank batches are split into ghost batches as on one device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.engine.runtime import RunError

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d", "ghost_batch_norm", "set_bn_batch"]


class _Ghost:
    """Mixin over ``nn.BatchNorm*d``: training-mode statistics over consecutive chunks of ``bn_batch`` samples."""

    bn_batch: int = 0

    def forward(self, input: Tensor) -> Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        g = self.bn_batch
        if not bn.training or g <= 0 or input.shape[0] <= g:
            return super().forward(input)  # type: ignore[misc]
        first, *rest = input.split(g)
        # chunk 0: DataParallel's replica 0, whose running-stat updates are the ones kept
        out = [super().forward(first)]  # type: ignore[misc]
        out += [F.batch_norm(c, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for c in rest]
        return torch.cat(out)


class GhostBatchNorm1d(_Ghost, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with ghost batches (see the module docstring)."""


class GhostBatchNorm2d(_Ghost, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with ghost batches (see the module docstring)."""


class GhostBatchNorm3d(_Ghost, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with ghost batches (see the module docstring)."""


_GHOST = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d, nn.BatchNorm3d: GhostBatchNorm3d}


def ghost_batch_norm(model: nn.Module, size: int) -> int:
    """Make every BatchNorm layer of ``model`` normalize training batches over chunks of ``size`` samples, in place.

    ``size = 0`` leaves the model untouched (BN over the whole batch; layers converted before go back
    to whole-batch BN). The layers keep their parameters, buffers and state-dict keys (their class
    becomes the ``GhostBatchNorm*d`` subclass), so checkpoints are unchanged. Returns the number of
    layers; ValueError if ``size`` is negative, or positive and the model has no plain
    ``nn.BatchNorm1d/2d/3d`` or has another batch-norm kind (SyncBatchNorm, timm's BatchNormAct2d),
    which would silently keep whole-batch statistics.
    """
    if size < 0:
        raise ValueError(f"the ghost batch size must be >= 0 (0 = whole-batch BN), got {size}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if size == 0:
        for m in layers:
            if isinstance(m, _Ghost):
                m.bn_batch = 0
        return 0
    other = sorted({type(m).__name__ for m in layers if type(m) not in _GHOST and not isinstance(m, _Ghost)})
    if other:
        raise ValueError(f"ghost batches support torch.nn.BatchNorm1d/2d/3d only; the model has {', '.join(other)}")
    if not layers:
        raise ValueError(f"ghost batches of {size} were asked for, but {type(model).__name__} has no BatchNorm layer")
    for m in layers:
        if not isinstance(m, _Ghost):
            m.__class__ = _GHOST[type(m)]
        m.bn_batch = size  # type: ignore[union-attr]
    return len(layers)


def set_bn_batch(model: nn.Module, size: int, key: str) -> None:
    """The config key ``key`` (``model.bn_batch``, ``meta.bn_episodes``) applied: :func:`ghost_batch_norm` with
    ``size`` images per ghost batch when it is > 0, its ValueError as a RunError naming ``key``."""
    if size:
        try:
            ghost_batch_norm(model, size)
        except ValueError as exc:
            raise RunError(f"{key}: {exc}") from exc
