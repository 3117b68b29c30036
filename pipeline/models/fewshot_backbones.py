"""Few-shot learning backbones (Conv-4, ResNet-12, ResNet-12/18/36 "v" variants and the paper's
ResNet-12/18/36 "bottle" backbones) registered into timm.

Names carry an ``fs_`` prefix so they cannot shadow timm's own models. Every backbone's
``forward_features`` returns a pooled feature vector ``[B, num_features]`` (the embedding used
for prototype / nearest-centroid evaluation); ``forward`` adds a linear head only when
``num_classes > 0``. The default is ``num_classes=0`` (feature extractor), like timm's
``num_classes=0``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from timm.models import generate_default_cfgs, register_model

from pipeline.models.record import refuse_unknown

__all__ = ["ConvNet4", "ResBlock3", "FewShotResNet"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Config for an 84x84 few-shot backbone (miniImageNet convention); no hosted weights."""
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 84, 84),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "fs_convnet4": _cfg(first_conv="encoder.0.0"),
    "fs_resnet12": _cfg(first_conv="stages.0.0.conv1"),
    "fs_resnet12v": _cfg(first_conv="stages.0.0.conv1"),
    "fs_resnet18v": _cfg(first_conv="stages.0.0.conv1"),
    "fs_resnet36v": _cfg(first_conv="stages.0.0.conv1"),
    "fs_resnet12_bottle": _cfg(first_conv="stages.0.0.conv1"),
    "fs_resnet18_bottle": _cfg(first_conv="stages.0.0.conv1"),
    "fs_resnet36_bottle": _cfg(first_conv="stages.0.0.conv1"),
})


class _HeadMixin:
    """timm-style classifier access shared by the backbones (``fc`` on top of pooled features)."""

    num_features: int
    num_classes: int
    fc: nn.Module

    def get_classifier(self) -> nn.Module:
        """Return the head (``nn.Identity`` when ``num_classes == 0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh linear layer for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features are already pooled; apply the head unless ``pre_logits``."""
        return x if pre_logits else self.fc(x)


def _pooled_size(size: int, times: int) -> int:
    """Spatial size after ``times`` floor-halving max-pools (kernel 2, stride 2)."""
    for _ in range(times):
        size //= 2
    return size


class ConvNet4(_HeadMixin, nn.Module):
    """Conv-4: four conv3x3(64)-BN-ReLU-maxpool2 blocks, flattened (1600-d for 84x84, 64-d for 28x28).

    The flattened size depends on the input, so ``img_size`` fixes ``num_features`` (and the head).
    """

    def __init__(self, num_classes: int = 0, in_chans: int = 3, hidden: int = 64, img_size: int = 84) -> None:
        super().__init__()
        blocks = []
        for i in range(4):
            blocks.append(nn.Sequential(
                nn.Conv2d(in_chans if i == 0 else hidden, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ))
        self.encoder = nn.Sequential(*blocks)
        side = _pooled_size(img_size, 4)
        if side < 1:
            raise ValueError(f"fs_convnet4: img_size={img_size} is too small for four 2x max-pools")
        self.img_size = img_size
        self.num_features = hidden * side * side
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened final feature map ``[B, num_features]``."""
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResBlock3(nn.Module):
    """Residual block of three conv3x3-BN (LeakyReLU 0.1 between and after) with a 1x1 conv+BN shortcut.

    ``pool`` appends a 2x max-pool (the Meta-Baseline ResNet-12 pools inside every block);
    ``shortcut=False`` makes the shortcut the identity (needs ``in_planes == planes``).
    """

    def __init__(self, in_planes: int, planes: int, pool: bool, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.act = nn.LeakyReLU(0.1)
        if not shortcut and in_planes != planes:
            raise ValueError(f"an identity shortcut needs in_planes == planes, got {in_planes} -> {planes}")
        self.downsample: nn.Module = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes))
                                      if shortcut else nn.Identity())
        self.pool: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.act(out + self.downsample(x))
        return self.pool(out)


class FewShotResNet(_HeadMixin, nn.Module):
    """Stages of :class:`ResBlock3` with one 2x max-pool at the end of each stage, then global average pool.

    ``depths=[1,1,1,1]`` with widths 64-160-320-640 is the Meta-Baseline ResNet-12.
    ``layout="bottle"`` is the paper's ``ResNet`` (few_shot_leaerning/models/resnet.py): only the first
    block of each stage has the 1x1 conv+BN shortcut and the 2x max-pool, later blocks keep the identity
    shortcut at the pooled size; its convs use kaiming-normal (fan_out, leaky_relu, slope 0) as there.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 0,
        in_chans: int = 3,
        layout: str = "pool_last",
    ) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"depths {list(depths)} and widths {list(widths)} must have the same length")
        if layout not in ("pool_last", "bottle"):
            raise ValueError(f"layout must be pool_last or bottle, got {layout!r}")
        bottle = layout == "bottle"
        stages: list[nn.Module] = []
        in_planes = in_chans
        for depth, planes in zip(depths, widths):
            blocks = []
            for j in range(depth):
                if bottle:
                    blocks.append(ResBlock3(in_planes, planes, pool=(j == 0), shortcut=(j == 0)))
                else:
                    blocks.append(ResBlock3(in_planes, planes, pool=(j == depth - 1)))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_planes
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.0 if bottle else 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features ``[B, num_features]``."""
        return self.stages(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _finish(model: nn.Module, name: str, in_chans: int, img_size: int = 84) -> nn.Module:
    """Attach timm-style ``pretrained_cfg``/``default_cfg`` dicts to a freshly built model."""
    cfg = default_cfgs[name].default.to_dict()
    cfg["num_classes"] = model.num_classes
    cfg["input_size"] = (in_chans, img_size, img_size)
    if in_chans != 3:
        cfg["mean"] = (0.5,) * in_chans
        cfg["std"] = (0.5,) * in_chans
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model


def _check(name: str, pretrained: bool, extra: dict[str, Any]) -> None:
    """Refuse ``pretrained`` (nothing is hosted) and any keyword the entrypoint does not name."""
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are available; build with pretrained=False and train it")
    refuse_unknown(name, extra)


def _resnet(name: str, depths: Sequence[int], widths: Sequence[int], pretrained: bool, num_classes: int,
            in_chans: int, img_size: int, extra: dict[str, Any], layout: str = "pool_last") -> nn.Module:
    """Shared factory for the ResNet-style backbones.

    ``img_size`` only sets the recorded ``input_size`` (global pooling accepts any size).
    """
    _check(name, pretrained, extra)
    model = FewShotResNet(depths, widths, num_classes=num_classes, in_chans=in_chans, layout=layout)
    return _finish(model, name, in_chans, img_size)


@register_model
def fs_convnet4(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> ConvNet4:
    """Conv-4 backbone; pass ``img_size`` (default 84) to size the flattened features for other inputs."""
    _check("fs_convnet4", pretrained, timm_args)
    model = ConvNet4(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    return _finish(model, "fs_convnet4", in_chans, img_size)


@register_model
def fs_resnet12(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """Meta-Baseline ResNet-12: four blocks, widths 64-160-320-640, 640-d features."""
    return _resnet("fs_resnet12", (1, 1, 1, 1), (64, 160, 320, 640), pretrained, num_classes, in_chans, img_size,
                   timm_args)


@register_model
def fs_resnet12v(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """ResNet-12 variant with widths 64-128-256-512 and stage depths [1, 1, 1, 1]; 512-d features."""
    return _resnet("fs_resnet12v", (1, 1, 1, 1), (64, 128, 256, 512), pretrained, num_classes, in_chans, img_size,
                   timm_args)


@register_model
def fs_resnet18v(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """ResNet-18 variant: widths 64-128-256-512, stage depths [1, 2, 2, 1]; 512-d features."""
    return _resnet("fs_resnet18v", (1, 2, 2, 1), (64, 128, 256, 512), pretrained, num_classes, in_chans, img_size,
                   timm_args)


@register_model
def fs_resnet36v(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """ResNet-36 variant: widths 64-128-256-512, stage depths [2, 3, 5, 2]; 512-d features."""
    return _resnet("fs_resnet36v", (2, 3, 5, 2), (64, 128, 256, 512), pretrained, num_classes, in_chans, img_size,
                   timm_args)


# The paper's few-shot backbones (few_shot_leaerning/models/resnet.py: resnet12_bottle = ResNet([1, 1, 1, 1]),
# resnet18_bottle = ResNet([1, 2, 2, 1]), resnet36_bottle = ResNet([2, 3, 5, 2]), widths 64-128-256-512):
# three convs per block, so 12 / 18 / 36 conv layers before the shortcuts.

@register_model
def fs_resnet12_bottle(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """The paper's ResNet-12 ("resnet12_bottle"): stage depths [1, 1, 1, 1], widths 64-128-256-512; 512-d features."""
    return _resnet("fs_resnet12_bottle", (1, 1, 1, 1), (64, 128, 256, 512), pretrained, num_classes, in_chans,
                   img_size, timm_args, layout="bottle")


@register_model
def fs_resnet18_bottle(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """The paper's ResNet-18 ("resnet18_bottle"): stage depths [1, 2, 2, 1], widths 64-128-256-512; 512-d features."""
    return _resnet("fs_resnet18_bottle", (1, 2, 2, 1), (64, 128, 256, 512), pretrained, num_classes, in_chans,
                   img_size, timm_args, layout="bottle")


@register_model
def fs_resnet36_bottle(pretrained: bool = False, num_classes: int = 0, in_chans: int = 3, img_size: int = 84,
                **timm_args: Any) -> FewShotResNet:
    """The paper's ResNet-36 ("resnet36_bottle"): stage depths [2, 3, 5, 2], widths 64-128-256-512; 512-d features."""
    return _resnet("fs_resnet36_bottle", (2, 3, 5, 2), (64, 128, 256, 512), pretrained, num_classes, in_chans,
                   img_size, timm_args, layout="bottle")
