"""ShuffleNet V1 (groups 3) and V2 (1.0x) of the CRD / mdistiller CIFAR-100 zoo, registered in timm.

Both use a 1x1, 24-channel, stride-1 stem (no max-pool) so a 32x32 input keeps
its resolution until the three stride-2 stages (final map 4x4).

V1: stages 240-480-960 with 4-8-4 bottlenecks, grouped 1x1 convs (the first
bottleneck after the stem uses a dense 1x1, its input being only 24 channels),
and stride-2 units that concatenate an avg-pooled shortcut.
V2: stages 116-232-464 with 3-7-3 basic units after a downsampling unit, then a
1x1 conv to 1024 channels before pooling.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from pipeline.models.cifar_resnet import CifarNet, ConvBnAct, build_cifar_model, cifar_cfg

__all__ = ["CifarShuffleNetV1", "CifarShuffleNetV2"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` so grouped convs exchange information."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet V1 bottleneck: gconv1x1 -> shuffle -> dw3x3 -> gconv1x1, add or concat shortcut.

    With stride 2 the branch produces ``out_chs - in_chs`` channels and is
    concatenated with a 3x3 avg-pooled input, so the unit outputs ``out_chs``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, dense_first: bool = False) -> None:
        super().__init__()
        self.stride = stride
        branch_chs = out_chs - in_chs if stride == 2 else out_chs
        mid_chs = branch_chs // 4
        self.first_groups = 1 if dense_first else groups
        self.conv1 = ConvBnAct(in_chs, mid_chs, 1, groups=self.first_groups)
        self.conv2 = ConvBnAct(mid_chs, mid_chs, 3, stride, groups=mid_chs)
        self.conv3 = ConvBnAct(mid_chs, branch_chs, 1, groups=groups, act=False)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(cat(branch, pool(x)))`` for stride 2, else ``relu(branch + x)``."""
        out = channel_shuffle(self.conv1(x), self.first_groups)
        out = self.conv3(self.conv2(out))
        res = self.shortcut(x)
        return self.act(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class CifarShuffleNetV1(CifarNet):
    """ShuffleNet V1 for 32x32 inputs."""

    def __init__(
        self,
        stage_chs: Sequence[int] = (240, 480, 960),
        depths: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_chans, drop_rate, global_pool)
        in_chs = 24
        self.stem = ConvBnAct(in_chans, in_chs, 1)
        stages: list[nn.Module] = []
        for i, (out_chs, depth) in enumerate(zip(stage_chs, depths)):
            units = []
            for u in range(depth):
                units.append(ShuffleV1Unit(in_chs, out_chs, 2 if u == 0 else 1, groups, dense_first=(i == 0 and u == 0)))
                in_chs = out_chs
            stages.append(nn.Sequential(*units))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self._init_head(in_chs)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last stage's feature map (4x4 for a 32x32 input)."""
        return self.stages(self.stem(x))


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 basic unit: split channels in half, transform one half, concat, shuffle."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        half = chs // 2
        self.branch = nn.Sequential(
            ConvBnAct(half, half, 1),
            ConvBnAct(half, half, 3, groups=half, act=False),
            ConvBnAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``shuffle(cat(x1, branch(x2)))`` where ``x1, x2`` are the channel halves."""
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class ShuffleV2Down(nn.Module):
    """ShuffleNet V2 stride-2 unit: two branches on the full input, each giving half the output."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        half = out_chs // 2
        self.branch_proj = nn.Sequential(
            ConvBnAct(in_chs, in_chs, 3, 2, groups=in_chs, act=False),
            ConvBnAct(in_chs, half, 1),
        )
        self.branch_main = nn.Sequential(
            ConvBnAct(in_chs, half, 1),
            ConvBnAct(half, half, 3, 2, groups=half, act=False),
            ConvBnAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``shuffle(cat(proj(x), main(x)))`` at half resolution."""
        return channel_shuffle(torch.cat([self.branch_proj(x), self.branch_main(x)], 1), 2)


class CifarShuffleNetV2(CifarNet):
    """ShuffleNet V2 for 32x32 inputs."""

    def __init__(
        self,
        stage_chs: Sequence[int] = (116, 232, 464),
        depths: Sequence[int] = (3, 7, 3),
        head_chs: int = 1024,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_chans, drop_rate, global_pool)
        in_chs = 24
        self.stem = ConvBnAct(in_chans, in_chs, 1)
        stages: list[nn.Module] = []
        for i, (out_chs, depth) in enumerate(zip(stage_chs, depths)):
            units: list[nn.Module] = [ShuffleV2Down(in_chs, out_chs)]
            units += [ShuffleV2Unit(out_chs) for _ in range(depth)]
            stages.append(nn.Sequential(*units))
            in_chs = out_chs
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.conv_head = ConvBnAct(in_chs, head_chs, 1)
        self._init_head(head_chs)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 1024-channel head feature map (4x4 for a 32x32 input)."""
        return self.conv_head(self.stages(self.stem(x)))


default_cfgs = generate_default_cfgs({"cifar_shufflenetv1": cifar_cfg(), "cifar_shufflenetv2": cifar_cfg()})


@register_model
def cifar_shufflenetv1(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ShuffleNet V1, groups 3 (CRD's ``ShuffleV1``), a common student of ResNet/WRN teachers."""
    return build_cifar_model(CifarShuffleNetV1, "cifar_shufflenetv1", pretrained, **kwargs)


@register_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """ShuffleNet V2 1.0x (CRD's ``ShuffleV2``), a common student of ResNet/WRN teachers."""
    return build_cifar_model(CifarShuffleNetV2, "cifar_shufflenetv2", pretrained, **kwargs)
