"""MobileNetV2 of the CRD / mdistiller CIFAR-100 zoo ("mobile_half"), registered in timm.

CRD's variant: expansion ratio 6, width multiplier 0.5 on the stem and block
widths (16 stem, 8-12-16-32-48-80-160), a stride-2 stem even at 32x32, a full
1280-channel final 1x1 conv (not scaled below width 1.0), and an expansion
1x1 conv in every block, including the first one whose ratio is 1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from pipeline.models.cifar_resnet import CifarNet, ConvBnAct, build_cifar_model, cifar_cfg

__all__ = ["CifarMobileNetV2"]

# (expansion or None for "use the model's ratio", base channels, blocks, first stride)
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear 1x1; residual add when shape is kept."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid_chs = in_chs * expansion
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv_pw = ConvBnAct(in_chs, mid_chs, 1)
        self.conv_dw = ConvBnAct(mid_chs, mid_chs, 3, stride, groups=mid_chs)
        self.conv_pwl = ConvBnAct(mid_chs, out_chs, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output, plus ``x`` when the shape allows."""
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.use_residual else out


class CifarMobileNetV2(CifarNet):
    """MobileNetV2 for 32x32 inputs, parametrized by expansion ratio and width multiplier."""

    def __init__(
        self,
        expansion: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_chans, drop_rate, global_pool)
        in_chs = int(32 * width_mult)
        self.stem = ConvBnAct(in_chans, in_chs, 3, stride=2)
        reduction = 2
        stages: list[nn.Module] = []
        for i, (t, c, n, s) in enumerate(_STAGES):
            out_chs = int(c * width_mult)
            blocks = []
            for b in range(n):
                blocks.append(InvertedResidual(in_chs, out_chs, s if b == 0 else 1, expansion if t is None else t))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            reduction *= s
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        head_chs = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv_head = ConvBnAct(in_chs, head_chs, 1)
        self._init_head(head_chs)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 1280-channel head feature map (2x2 for a 32x32 input)."""
        return self.conv_head(self.stages(self.stem(x)))


default_cfgs = generate_default_cfgs({"cifar_mobilenetv2": cifar_cfg()})


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """MobileNetV2, expansion 6, width 0.5 (CRD's ``mobile_half``), a common student of ResNet/WRN teachers."""
    return build_cifar_model(lambda **kw: CifarMobileNetV2(6, 0.5, **kw), "cifar_mobilenetv2", pretrained, **kwargs)
