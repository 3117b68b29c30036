"""Pre-activation ResNet-18/34 for 32x32 inputs, laid out exactly as upstream Sel-CL's ``PreActResNet18/34``.

Upstream: ggjy/vision_weak_to_strong ``noisy_labels_learning/utils_sel/models/preact_resnet.py`` (the
same file as ShikunLi/Sel-CL ``utils/models/preact_resnet.py``), the networks of the paper's noisy-label
experiments. Stem ``conv1`` (3x3, stride 1, 64 channels, no max-pool) -> ``bn1`` -> ReLU, four stages of
pre-activation blocks (64-128-256-512 channels, strides 1-2-2-2), global average pooling with no final BN,
and the classifier ``linear2``. Module, parameter and buffer names match upstream, so an upstream
state dict loads once its contrastive projection ``head.*`` is split off (this project keeps that
projection outside the backbone, in Sel-CL's ``SelCLNet.projection``). Registered into timm so
``timm.create_model`` builds them.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import generate_default_cfgs, register_model

from pipeline.models.record import refuse_unknown

__all__ = ["PreActBlock", "PreActResNet"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Pretrained-config dict for a CIFAR model; there are no hosted weights (no url / hub id)."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "linear2",
        **kwargs,
    }


# Module-level ``default_cfgs`` lets timm's registry expose these through ``get_pretrained_cfg``.
default_cfgs = generate_default_cfgs({
    "preact_resnet18": _cfg(),
    "preact_resnet34": _cfg(),
})


class PreActBlock(nn.Module):
    """Upstream ``PreActBlock``: BN-ReLU, then conv3x3-BN-ReLU-conv3x3 plus a shortcut of the activated input.

    As upstream, the shortcut always reads ``relu(bn1(x))``: an empty ``nn.Sequential`` (identity) when
    stride and width are kept, else ``nn.Sequential(conv1x1)`` with no BN (state-dict key ``shortcut.0.weight``).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Upstream Sel-CL ``ResNet`` with ``PreActBlock`` (without its projection ``head``), with timm's interface."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages: list[nn.Module] = []
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(PreActBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes
        self.linear2: nn.Module = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Upstream's init: Kaiming-normal convs (fan-out, ReLU), unit/zero BN, default PyTorch init for the head."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the classification head ``linear2`` (``nn.Identity`` when ``num_classes == 0``)."""
        return self.linear2

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 removes it); pooling is fixed to average."""
        if global_pool not in (None, "", "avg"):
            raise ValueError(f"PreActResNet only supports average pooling, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.linear2 = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled feature map ``[B, 512, H/8, W/8]``: stem conv-BN-ReLU and the four stages, no final BN."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool the feature map; return pooled features (upstream ``feat_classifier``) if ``pre_logits`` else logits."""
        x = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return x if pre_logits else self.linear2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(name: str, layers: tuple[int, int, int, int], pretrained: bool, num_classes: int, in_chans: int,
            drop_rate: float, extra: dict[str, Any]) -> PreActResNet:
    """Build a registered variant; ``pretrained=True`` fails because no weights are hosted, and so does any
    keyword other than ``num_classes`` / ``in_chans`` / ``drop_rate`` (taken as timm's train.py passes it,
    but only as 0: the upstream network has no dropout)."""
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are available; build with pretrained=False and train it")
    if drop_rate:
        raise ValueError(f"{name}: drop_rate={drop_rate} is not supported (the network has no dropout); use 0")
    refuse_unknown(name, extra)
    model = PreActResNet(layers, num_classes=num_classes, in_chans=in_chans)
    cfg = default_cfgs[name].default.to_dict()
    cfg["num_classes"] = num_classes
    cfg["input_size"] = (in_chans, 32, 32)
    if in_chans != 3:
        cfg["mean"] = tuple(sum(CIFAR10_MEAN) / 3 for _ in range(in_chans))
        cfg["std"] = tuple(sum(CIFAR10_STD) / 3 for _ in range(in_chans))
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model


@register_model
def preact_resnet18(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
                    **timm_args: Any) -> PreActResNet:
    """PreAct-ResNet18 (upstream Sel-CL ``PreActResNet18``), blocks [2, 2, 2, 2]."""
    return _create("preact_resnet18", (2, 2, 2, 2), pretrained, num_classes, in_chans, drop_rate, timm_args)


@register_model
def preact_resnet34(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
                    **timm_args: Any) -> PreActResNet:
    """PreAct-ResNet34 (upstream ggjy ``PreActResNet34``; ShikunLi/Sel-CL's copy defines only PR18), blocks [3, 4, 6, 3]."""
    return _create("preact_resnet34", (3, 4, 6, 3), pretrained, num_classes, in_chans, drop_rate, timm_args)
