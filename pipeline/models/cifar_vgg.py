"""VGG with batch norm, as in the CRD / mdistiller CIFAR-100 zoo, registered in timm.

Five stages of 3x3 conv(with bias)+BN+ReLU. For 32x32 inputs the zoo max-pools
after stages 0-2 only (32 -> 16 -> 8 -> 4), runs stages 3 and 4 at 4x4, then
global-average-pools into a single 512 -> classes linear layer (no VGG FC stack),
which is why these VGGs are far smaller than the ImageNet ones.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from pipeline.models.cifar_resnet import CifarNet, ConvBnAct, build_cifar_model, cifar_cfg

__all__ = ["CifarVGG"]

# Conv widths per stage (the CRD "S", "A", "B", "D", "E" configurations).
VGG_STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

# Stages followed by a 2x2 max-pool at 32x32 input (stage 3's pool is only used at 64x64 in the zoo).
_POOL_AFTER = (True, True, True, False, False)


class CifarVGG(CifarNet):
    """VGG-BN for 32x32 inputs with a global-average-pool + single linear head."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_chans, drop_rate, global_pool)
        layers: list[nn.Module] = []
        in_chs = in_chans
        reduction = 1
        for i, (widths, pool) in enumerate(zip(stages, _POOL_AFTER)):
            stage = nn.Sequential()
            for j, out_chs in enumerate(widths):
                stage.add_module(str(j), ConvBnAct(in_chs, out_chs, 3, bias=True))
                in_chs = out_chs
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"stages.{i}"))
            if pool:
                stage.add_module("pool", nn.MaxPool2d(kernel_size=2, stride=2))
                reduction *= 2
            layers.append(stage)
        self.stages = nn.Sequential(*layers)
        self._init_head(in_chs)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the stage-4 feature map (4x4 for a 32x32 input)."""
        return self.stages(x)


default_cfgs = generate_default_cfgs({f"cifar_{name}": cifar_cfg(first_conv="stages.0.0.conv") for name in VGG_STAGES})


def _vgg(name: str, pretrained: bool, **kwargs: Any) -> CifarNet:
    """Build one VGG-BN variant through the shared timm-facing builder."""
    return build_cifar_model(lambda **kw: CifarVGG(VGG_STAGES[name], **kw), f"cifar_{name}", pretrained, **kwargs)


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """VGG-8-BN (one conv per stage), the usual student of vgg13."""
    return _vgg("vgg8", pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """VGG-11-BN (configuration A)."""
    return _vgg("vgg11", pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """VGG-13-BN (configuration B), a common CRD teacher."""
    return _vgg("vgg13", pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """VGG-16-BN (configuration D)."""
    return _vgg("vgg16", pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> CifarNet:
    """VGG-19-BN (configuration E)."""
    return _vgg("vgg19", pretrained, **kwargs)
