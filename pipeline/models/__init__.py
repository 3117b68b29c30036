"""Model factory: timm's ``create_model``, with this project's models registered into timm on import."""
from __future__ import annotations

from typing import Any

import timm
from torch import nn

from pipeline.models import (  # noqa: F401  (importing registers the models in timm)
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_shufflenet,
    cifar_vgg,
    cifar_wrn,
    fewshot_backbones,
    preact_resnet,
    small,
)


def create(name: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """Build ``name`` from timm's registry; an unknown name lists close matches."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}")
    return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
