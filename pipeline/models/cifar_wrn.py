"""Wide ResNets (Zagoruyko & Komodakis, 2016) of the CRD / mdistiller CIFAR-100 zoo, registered in timm.

``wrn_D_K``: depth ``D = 6n+4`` (``n`` pre-activation blocks per stage), widen
factor ``K`` (stage widths 16K-32K-64K after a 16-channel stem). The final
BatchNorm+ReLU sits before pooling, as blocks are pre-activation. No dropout,
matching the zoo's ``dropRate=0``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from pipeline.models.cifar_resnet import CifarNet, build_cifar_model, cifar_cfg

__all__ = ["CifarWideResNet"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 projection of the *activated* input when the shape changes.

    Identity shortcuts carry the raw input, projections see ``relu(bn1(x))`` as in
    the original WRN code, which keeps the checkpoints' behaviour comparable.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``shortcut + conv2(act(bn2(conv1(act(bn1(x))))))``."""
        pre = self.act1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return out + residual


class CifarWideResNet(CifarNet):
    """3-stage pre-activation Wide ResNet for 32x32 inputs."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_chans, drop_rate, global_pool)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False))
        stages: list[nn.Module] = []
        in_chs = 16
        for i, (out_chs, stride) in enumerate(zip(widths, (1, 2, 2))):
            blocks = [PreActBlock(in_chs if b == 0 else out_chs, out_chs, stride if b == 0 else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_chs = out_chs
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_chs)
        self.act = nn.ReLU(inplace=True)
        self._init_head(in_chs)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the activated last feature map (8x8 for a 32x32 input)."""
        return self.act(self.norm(self.stages(self.stem(x))))


default_cfgs = generate_default_cfgs({
    name: cifar_cfg() for name in ("cifar_wrn_16_1", "cifar_wrn_16_2", "cifar_wrn_40_1", "cifar_wrn_40_2")
})


def _wrn(variant: str, depth: int, widen_factor: int, pretrained: bool, **kwargs: Any) -> CifarNet:
    """Build one WRN variant through the shared timm-facing builder."""
    return build_cifar_model(lambda **kw: CifarWideResNet(depth, widen_factor, **kw), variant, pretrained, **kwargs)


@register_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """WRN-16-1 (2 blocks/stage, widths 16-32-64)."""
    return _wrn("cifar_wrn_16_1", 16, 1, pretrained, **kwargs)


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """WRN-16-2 (2 blocks/stage, widths 32-64-128), the usual student of wrn_40_2."""
    return _wrn("cifar_wrn_16_2", 16, 2, pretrained, **kwargs)


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """WRN-40-1 (6 blocks/stage, widths 16-32-64)."""
    return _wrn("cifar_wrn_40_1", 40, 1, pretrained, **kwargs)


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """WRN-40-2 (6 blocks/stage, widths 32-64-128), a common CRD teacher."""
    return _wrn("cifar_wrn_40_2", 40, 2, pretrained, **kwargs)
