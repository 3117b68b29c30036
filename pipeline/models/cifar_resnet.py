"""CIFAR ResNets of the CRD / mdistiller CIFAR-100 zoo, registered in timm.

Besides the ResNets, this module holds the pieces every CIFAR zoo module shares
(CIFAR-100 normalization, the timm-style head, the entrypoint builder), so the
other ``cifar_*`` modules import them from here instead of repeating them.

The ResNets are the 3-stage, 32x32-input networks of He et al. (2016) as used by
CRD: depth ``6n+2`` with ``n`` basic blocks per stage, a 3x3 stem, 1x1 projection
shortcuts whenever the shape changes, and a global average pool before the
classifier. ``resnet8x4``/``resnet32x4`` are the 4x wider teachers of the zoo.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CifarNet",
    "CifarResNet",
    "ConvBnAct",
    "build_cifar_model",
    "cifar_cfg",
]

CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """Return a timm pretrained-cfg dict for a 32x32 CIFAR-100 model (no hosted weights).

    timm's data utilities (``resolve_data_config`` etc.) read mean/std/input size
    from this, so CIFAR models get CIFAR statistics instead of ImageNet ones.
    """
    cfg: dict[str, Any] = dict(
        num_classes=100,
        input_size=(3, 32, 32),
        pool_size=None,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        first_conv="stem.conv",
        classifier="fc",
        license="no weights",
    )
    cfg.update(overrides)
    return cfg


class CifarNet(nn.Module):
    """Base class giving the CIFAR zoo the timm model interface.

    Subclasses build their trunk, set ``num_features`` and implement
    ``forward_features``; this class owns the pooling + classifier head so that
    ``get_classifier``/``reset_classifier``/``forward_head`` behave like timm's.
    """

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool_type = global_pool
        self.num_features = 0
        self.feature_info: list[dict[str, Any]] = []

    def _init_head(self, num_features: int) -> None:
        """Create pool, dropout and linear classifier on ``num_features`` channels."""
        self.num_features = num_features
        self.head_hidden_size = num_features
        self.global_pool, self.fc = create_classifier(num_features, self.num_classes, pool_type=self.global_pool_type)
        self.head_drop = nn.Dropout(self.drop_rate)

    def _init_weights(self) -> None:
        """He-normal convs and unit BatchNorm, as in the CRD zoo (keeps training recipes comparable)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer (timm API)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` outputs (0 gives pooled features)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool_type = global_pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=self.global_pool_type)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map ``[N, num_features, H, W]`` (implemented by subclasses)."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map and classify it; ``pre_logits`` returns the pooled vector."""
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[N, num_classes]``."""
        return self.forward_head(self.forward_features(x))


def build_cifar_model(
    model_cls: Callable[..., CifarNet],
    variant: str,
    pretrained: bool = False,
    *,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
    features_only: bool = False,
    drop_path_rate: float | None = None,
    drop_block_rate: float | None = None,
    device: Any = None,
    dtype: Any = None,
    **kwargs: Any,
) -> CifarNet:
    """Build a CIFAR zoo model from a timm entrypoint call.

    Takes the keyword arguments ``timm.create_model`` forwards, refuses the ones
    that cannot be honoured (``pretrained=True``: no weights are hosted;
    ``features_only``), warns about regularizers these architectures do not have,
    and attaches the resolved pretrained cfg so timm utilities find CIFAR stats.
    """
    del cache_dir  # nothing is ever downloaded
    if pretrained:
        raise RuntimeError(
            f"{variant}: no pretrained weights are hosted for the CIFAR zoo; create it with pretrained=False "
            "and load your own checkpoint (e.g. timm.create_model(..., checkpoint_path=...))."
        )
    if features_only:
        raise ValueError(f"{variant}: features_only is not supported; use forward_features() instead.")
    for name, rate in (("drop_path_rate", drop_path_rate), ("drop_block_rate", drop_block_rate)):
        if rate:
            warnings.warn(f"{variant}: {name}={rate} ignored (the architecture has no such regularizer).", stacklevel=3)
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    model = model_cls(**kwargs)
    if model.in_chans != cfg["input_size"][0]:
        cfg["input_size"] = (model.in_chans, *cfg["input_size"][1:])
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # older timm name, still read by some utilities
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


class ConvBnAct(nn.Sequential):
    """Conv + BatchNorm + optional ReLU: the CIFAR zoo's recurring unit (conv bias only for VGG)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()


class BasicBlock(nn.Module):
    """Post-activation residual block: two 3x3 convs, projection shortcut if the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(in_chs, out_chs, 3, stride)
        self.conv2 = ConvBnAct(out_chs, out_chs, 3, act=False)
        if stride != 1 or in_chs != out_chs:
            self.shortcut: nn.Module = ConvBnAct(in_chs, out_chs, 1, stride, act=False)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(F(x) + shortcut(x))``."""
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(CifarNet):
    """3-stage CIFAR ResNet; ``widths`` = (stem, stage1, stage2, stage3) channels, depth ``6n+2``."""

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_chans, drop_rate, global_pool)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = ConvBnAct(in_chans, widths[0], 3)
        stages: list[nn.Module] = []
        in_chs = widths[0]
        for i, (out_chs, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [BasicBlock(in_chs if b == 0 else out_chs, out_chs, stride if b == 0 else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_chs = out_chs
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self._init_head(widths[3])
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the stage-3 feature map (8x8 for a 32x32 input)."""
        return self.stages(self.stem(x))


default_cfgs = generate_default_cfgs({
    name: cifar_cfg()
    for name in (
        "cifar_resnet8", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
        "cifar_resnet56", "cifar_resnet110", "cifar_resnet8x4", "cifar_resnet32x4",
    )
})

_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _resnet(variant: str, depth: int, widths: tuple[int, int, int, int], pretrained: bool, **kwargs: Any) -> CifarNet:
    """Build one CIFAR ResNet variant through the shared timm-facing builder."""
    return build_cifar_model(lambda **kw: CifarResNet(depth, widths, **kw), variant, pretrained, **kwargs)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-8 (1 block/stage, widths 16-32-64)."""
    return _resnet("cifar_resnet8", 8, _THIN, pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-20 (3 blocks/stage, widths 16-32-64)."""
    return _resnet("cifar_resnet20", 20, _THIN, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-32 (5 blocks/stage, widths 16-32-64)."""
    return _resnet("cifar_resnet32", 32, _THIN, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-44 (7 blocks/stage, widths 16-32-64)."""
    return _resnet("cifar_resnet44", 44, _THIN, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-56 (9 blocks/stage, widths 16-32-64), a common CRD teacher."""
    return _resnet("cifar_resnet56", 56, _THIN, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-110 (18 blocks/stage, widths 16-32-64)."""
    return _resnet("cifar_resnet110", 110, _THIN, pretrained, **kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-8x4 (1 block/stage, stem 32, widths 64-128-256), the usual student of resnet32x4."""
    return _resnet("cifar_resnet8x4", 8, _WIDE, pretrained, **kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ResNet-32x4 (5 blocks/stage, stem 32, widths 64-128-256), a common CRD teacher."""
    return _resnet("cifar_resnet32x4", 32, _WIDE, pretrained, **kwargs)
