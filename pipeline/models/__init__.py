"""Model factory: timm's ``create_model``, with this project's models registered into timm on import."""
from __future__ import annotations

from typing import Any

import timm
from torch import nn

from pipeline.models import small  # noqa: F401  (registers the models)


def create(name: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """Build ``name`` from timm's registry; an unknown name lists close matches."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}")
    return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
