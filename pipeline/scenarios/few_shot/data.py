"""What both few-shot commands share: the split they read, the saved encoders they load, and the
fixed view (view 0: the whole image, in the model's own normalization) their models embed.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.models.files import load_model
from pipeline.config.schema import DataConfig
from pipeline.data.loader import Batch, ViewReplayer, crop_size_for, stream
from pipeline.engine.runtime import RunError
from pipeline.data.sources.base import Source
from pipeline.data.sources.registry import load_split
from pipeline.data.views import ViewPolicy, sample_params

FIXED_VIEW = ViewPolicy(kind="none")  # only view 0 is used: the whole image (crop_pct 1), no flip


def _split(data: DataConfig, split: str, train: bool) -> Source:
    """One split through the shared selection (``pipeline.data.sources.registry.load_split``): ``data.classes``
    kept and relabelled, then the subset/limit (training) or ``test_limit`` (test); only this split is read."""
    d = data
    common = dict(data_dir=d.data_dir, image_size=d.image_size, skip_corrupt=d.skip_corrupt, classes=d.classes)
    if train:
        return load_split(d.source, split, training=True, subset=d.subset, subset_seed=d.subset_seed, limit=d.limit,
                          noise_mode=d.noise_mode, noise_rate=d.noise_rate, noise_seed=d.noise_seed, **common)
    return load_split(d.source, split, training=False, limit=d.test_limit, **common)


def _load_encoder(path: str | None, role: str, source: Source, device: torch.device) -> tuple[nn.Module, dict[str, Any], str]:
    """A saved model on ``device``, checked against the data's channels: (model, model.json, sha256)."""
    if not path:
        raise RunError(f"{role}.checkpoint is not set (a w2s train-teacher / train-student / few-shot meta run directory)")
    model, meta, sha = load_model(path)
    if int(meta["in_chans"]) != source.channels:
        raise RunError(f"{role} {path} takes {meta['in_chans']} channel(s) but {source.name} images have {source.channels}")
    return model.to(device), meta, sha


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Pooled, flattened pre-logit features ``[B, D]``: timm's ``forward_head(forward_features(x), pre_logits=True)``.

    For the few-shot backbones and the small models this is ``forward_features`` itself; for timm
    models whose ``forward_features`` returns a feature map, ``forward_head`` pools it.
    """
    feats = model.forward_features(x)  # type: ignore[operator]
    if hasattr(model, "forward_head"):
        feats = model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
    return feats.reshape(feats.shape[0], -1)


def _fixed_views(source: Source, specs: list[Any], batches: list[np.ndarray], batch_size: int, device: torch.device,
                 num_threads: int) -> Iterator[Batch]:
    """Stream the fixed view of ``batches`` of sample indices, one normalized tensor per input spec."""
    replayer = ViewReplayer(source.image_hw, specs, batch_size, crop_size_for(FIXED_VIEW, source), str(device),
                            num_threads, decode=source.encoded)
    return stream(source, batches, replayer, lambda idx: sample_params(FIXED_VIEW, idx, 0, source.sizes_of(idx)))


def _single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("the few-shot commands run in one process; start them without torchrun")
