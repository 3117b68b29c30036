"""PreAct-ResNet18/34 lay out exactly as upstream Sel-CL's definition.

Upstream: github.com/ggjy/vision_weak_to_strong ``noisy_labels_learning/utils_sel/models/preact_resnet.py``
(``ResNet`` with ``PreActBlock``; the same file as github.com/ShikunLi/Sel-CL ``utils/models/preact_resnet.py``,
which defines only PR18). The tables below were generated once from that file's ``PreActResNet18/34(num_classes=10,
low_dim=128, head="Linear")`` and checked by hand against its code: ``ResNet.forward`` runs ``conv1 -> bn1 -> relu ->
layer1..4 -> adaptive_avg_pool2d -> linear2`` (no final BN); ``PreActBlock.forward`` runs ``bn1 -> relu -> shortcut
-> conv1 -> bn2 -> relu -> conv2``, the shortcut reading the activated input (an empty ``nn.Sequential`` or a
BN-less 1x1 conv at ``shortcut.0``). Upstream's contrastive projection ``head`` is not part of this backbone; it
is Sel-CL's ``SelCLNet.projection`` here, so an upstream state dict loads split in two.
"""
from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.preact_resnet import PreActBlock  # importing registers preact_resnet*
from pipeline.scenarios.sel_cl.steps import SelCLNet

# Leaf modules and functional ops in execution order; "relu" / "pool" are upstream's F.relu / F.adaptive_avg_pool2d.
ORDER = {
    "preact_resnet18": """
conv1 bn1 relu
layer1.0.bn1 relu layer1.0.shortcut layer1.0.conv1 layer1.0.bn2 relu layer1.0.conv2
layer1.1.bn1 relu layer1.1.shortcut layer1.1.conv1 layer1.1.bn2 relu layer1.1.conv2
layer2.0.bn1 relu layer2.0.shortcut.0 layer2.0.conv1 layer2.0.bn2 relu layer2.0.conv2
layer2.1.bn1 relu layer2.1.shortcut layer2.1.conv1 layer2.1.bn2 relu layer2.1.conv2
layer3.0.bn1 relu layer3.0.shortcut.0 layer3.0.conv1 layer3.0.bn2 relu layer3.0.conv2
layer3.1.bn1 relu layer3.1.shortcut layer3.1.conv1 layer3.1.bn2 relu layer3.1.conv2
layer4.0.bn1 relu layer4.0.shortcut.0 layer4.0.conv1 layer4.0.bn2 relu layer4.0.conv2
layer4.1.bn1 relu layer4.1.shortcut layer4.1.conv1 layer4.1.bn2 relu layer4.1.conv2
pool linear2
""",
    "preact_resnet34": """
conv1 bn1 relu
layer1.0.bn1 relu layer1.0.shortcut layer1.0.conv1 layer1.0.bn2 relu layer1.0.conv2
layer1.1.bn1 relu layer1.1.shortcut layer1.1.conv1 layer1.1.bn2 relu layer1.1.conv2
layer1.2.bn1 relu layer1.2.shortcut layer1.2.conv1 layer1.2.bn2 relu layer1.2.conv2
layer2.0.bn1 relu layer2.0.shortcut.0 layer2.0.conv1 layer2.0.bn2 relu layer2.0.conv2
layer2.1.bn1 relu layer2.1.shortcut layer2.1.conv1 layer2.1.bn2 relu layer2.1.conv2
layer2.2.bn1 relu layer2.2.shortcut layer2.2.conv1 layer2.2.bn2 relu layer2.2.conv2
layer2.3.bn1 relu layer2.3.shortcut layer2.3.conv1 layer2.3.bn2 relu layer2.3.conv2
layer3.0.bn1 relu layer3.0.shortcut.0 layer3.0.conv1 layer3.0.bn2 relu layer3.0.conv2
layer3.1.bn1 relu layer3.1.shortcut layer3.1.conv1 layer3.1.bn2 relu layer3.1.conv2
layer3.2.bn1 relu layer3.2.shortcut layer3.2.conv1 layer3.2.bn2 relu layer3.2.conv2
layer3.3.bn1 relu layer3.3.shortcut layer3.3.conv1 layer3.3.bn2 relu layer3.3.conv2
layer3.4.bn1 relu layer3.4.shortcut layer3.4.conv1 layer3.4.bn2 relu layer3.4.conv2
layer3.5.bn1 relu layer3.5.shortcut layer3.5.conv1 layer3.5.bn2 relu layer3.5.conv2
layer4.0.bn1 relu layer4.0.shortcut.0 layer4.0.conv1 layer4.0.bn2 relu layer4.0.conv2
layer4.1.bn1 relu layer4.1.shortcut layer4.1.conv1 layer4.1.bn2 relu layer4.1.conv2
layer4.2.bn1 relu layer4.2.shortcut layer4.2.conv1 layer4.2.bn2 relu layer4.2.conv2
pool linear2
""",
}

# Every state-dict entry (parameters and buffers) in upstream's order: name, shape ("scalar" for 0-d).
STATE = {
    "preact_resnet18": """
conv1.weight 64x3x3x3
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked scalar
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked scalar
layer1.0.conv1.weight 64x64x3x3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked scalar
layer1.0.conv2.weight 64x64x3x3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked scalar
layer1.1.conv1.weight 64x64x3x3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked scalar
layer1.1.conv2.weight 64x64x3x3
layer2.0.bn1.weight 64
layer2.0.bn1.bias 64
layer2.0.bn1.running_mean 64
layer2.0.bn1.running_var 64
layer2.0.bn1.num_batches_tracked scalar
layer2.0.conv1.weight 128x64x3x3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked scalar
layer2.0.conv2.weight 128x128x3x3
layer2.0.shortcut.0.weight 128x64x1x1
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked scalar
layer2.1.conv1.weight 128x128x3x3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked scalar
layer2.1.conv2.weight 128x128x3x3
layer3.0.bn1.weight 128
layer3.0.bn1.bias 128
layer3.0.bn1.running_mean 128
layer3.0.bn1.running_var 128
layer3.0.bn1.num_batches_tracked scalar
layer3.0.conv1.weight 256x128x3x3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked scalar
layer3.0.conv2.weight 256x256x3x3
layer3.0.shortcut.0.weight 256x128x1x1
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked scalar
layer3.1.conv1.weight 256x256x3x3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked scalar
layer3.1.conv2.weight 256x256x3x3
layer4.0.bn1.weight 256
layer4.0.bn1.bias 256
layer4.0.bn1.running_mean 256
layer4.0.bn1.running_var 256
layer4.0.bn1.num_batches_tracked scalar
layer4.0.conv1.weight 512x256x3x3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked scalar
layer4.0.conv2.weight 512x512x3x3
layer4.0.shortcut.0.weight 512x256x1x1
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked scalar
layer4.1.conv1.weight 512x512x3x3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked scalar
layer4.1.conv2.weight 512x512x3x3
linear2.weight 10x512
linear2.bias 10
""",
    "preact_resnet34": """
conv1.weight 64x3x3x3
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked scalar
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked scalar
layer1.0.conv1.weight 64x64x3x3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked scalar
layer1.0.conv2.weight 64x64x3x3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked scalar
layer1.1.conv1.weight 64x64x3x3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked scalar
layer1.1.conv2.weight 64x64x3x3
layer1.2.bn1.weight 64
layer1.2.bn1.bias 64
layer1.2.bn1.running_mean 64
layer1.2.bn1.running_var 64
layer1.2.bn1.num_batches_tracked scalar
layer1.2.conv1.weight 64x64x3x3
layer1.2.bn2.weight 64
layer1.2.bn2.bias 64
layer1.2.bn2.running_mean 64
layer1.2.bn2.running_var 64
layer1.2.bn2.num_batches_tracked scalar
layer1.2.conv2.weight 64x64x3x3
layer2.0.bn1.weight 64
layer2.0.bn1.bias 64
layer2.0.bn1.running_mean 64
layer2.0.bn1.running_var 64
layer2.0.bn1.num_batches_tracked scalar
layer2.0.conv1.weight 128x64x3x3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked scalar
layer2.0.conv2.weight 128x128x3x3
layer2.0.shortcut.0.weight 128x64x1x1
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked scalar
layer2.1.conv1.weight 128x128x3x3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked scalar
layer2.1.conv2.weight 128x128x3x3
layer2.2.bn1.weight 128
layer2.2.bn1.bias 128
layer2.2.bn1.running_mean 128
layer2.2.bn1.running_var 128
layer2.2.bn1.num_batches_tracked scalar
layer2.2.conv1.weight 128x128x3x3
layer2.2.bn2.weight 128
layer2.2.bn2.bias 128
layer2.2.bn2.running_mean 128
layer2.2.bn2.running_var 128
layer2.2.bn2.num_batches_tracked scalar
layer2.2.conv2.weight 128x128x3x3
layer2.3.bn1.weight 128
layer2.3.bn1.bias 128
layer2.3.bn1.running_mean 128
layer2.3.bn1.running_var 128
layer2.3.bn1.num_batches_tracked scalar
layer2.3.conv1.weight 128x128x3x3
layer2.3.bn2.weight 128
layer2.3.bn2.bias 128
layer2.3.bn2.running_mean 128
layer2.3.bn2.running_var 128
layer2.3.bn2.num_batches_tracked scalar
layer2.3.conv2.weight 128x128x3x3
layer3.0.bn1.weight 128
layer3.0.bn1.bias 128
layer3.0.bn1.running_mean 128
layer3.0.bn1.running_var 128
layer3.0.bn1.num_batches_tracked scalar
layer3.0.conv1.weight 256x128x3x3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked scalar
layer3.0.conv2.weight 256x256x3x3
layer3.0.shortcut.0.weight 256x128x1x1
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked scalar
layer3.1.conv1.weight 256x256x3x3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked scalar
layer3.1.conv2.weight 256x256x3x3
layer3.2.bn1.weight 256
layer3.2.bn1.bias 256
layer3.2.bn1.running_mean 256
layer3.2.bn1.running_var 256
layer3.2.bn1.num_batches_tracked scalar
layer3.2.conv1.weight 256x256x3x3
layer3.2.bn2.weight 256
layer3.2.bn2.bias 256
layer3.2.bn2.running_mean 256
layer3.2.bn2.running_var 256
layer3.2.bn2.num_batches_tracked scalar
layer3.2.conv2.weight 256x256x3x3
layer3.3.bn1.weight 256
layer3.3.bn1.bias 256
layer3.3.bn1.running_mean 256
layer3.3.bn1.running_var 256
layer3.3.bn1.num_batches_tracked scalar
layer3.3.conv1.weight 256x256x3x3
layer3.3.bn2.weight 256
layer3.3.bn2.bias 256
layer3.3.bn2.running_mean 256
layer3.3.bn2.running_var 256
layer3.3.bn2.num_batches_tracked scalar
layer3.3.conv2.weight 256x256x3x3
layer3.4.bn1.weight 256
layer3.4.bn1.bias 256
layer3.4.bn1.running_mean 256
layer3.4.bn1.running_var 256
layer3.4.bn1.num_batches_tracked scalar
layer3.4.conv1.weight 256x256x3x3
layer3.4.bn2.weight 256
layer3.4.bn2.bias 256
layer3.4.bn2.running_mean 256
layer3.4.bn2.running_var 256
layer3.4.bn2.num_batches_tracked scalar
layer3.4.conv2.weight 256x256x3x3
layer3.5.bn1.weight 256
layer3.5.bn1.bias 256
layer3.5.bn1.running_mean 256
layer3.5.bn1.running_var 256
layer3.5.bn1.num_batches_tracked scalar
layer3.5.conv1.weight 256x256x3x3
layer3.5.bn2.weight 256
layer3.5.bn2.bias 256
layer3.5.bn2.running_mean 256
layer3.5.bn2.running_var 256
layer3.5.bn2.num_batches_tracked scalar
layer3.5.conv2.weight 256x256x3x3
layer4.0.bn1.weight 256
layer4.0.bn1.bias 256
layer4.0.bn1.running_mean 256
layer4.0.bn1.running_var 256
layer4.0.bn1.num_batches_tracked scalar
layer4.0.conv1.weight 512x256x3x3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked scalar
layer4.0.conv2.weight 512x512x3x3
layer4.0.shortcut.0.weight 512x256x1x1
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked scalar
layer4.1.conv1.weight 512x512x3x3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked scalar
layer4.1.conv2.weight 512x512x3x3
layer4.2.bn1.weight 512
layer4.2.bn1.bias 512
layer4.2.bn1.running_mean 512
layer4.2.bn1.running_var 512
layer4.2.bn1.num_batches_tracked scalar
layer4.2.conv1.weight 512x512x3x3
layer4.2.bn2.weight 512
layer4.2.bn2.bias 512
layer4.2.bn2.running_mean 512
layer4.2.bn2.running_var 512
layer4.2.bn2.num_batches_tracked scalar
layer4.2.conv2.weight 512x512x3x3
linear2.weight 10x512
linear2.bias 10
""",
}

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _table(text: str) -> dict[str, tuple[int, ...]]:
    """``name shape`` lines -> ordered ``{name: shape}``."""
    rows = [line.split() for line in text.strip().splitlines()]
    return {name: () if shape == "scalar" else tuple(int(d) for d in shape.split("x")) for name, shape in rows}


def _trace(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the leaf modules run by ``model(x)``, with upstream's functional ReLU and pooling, in order."""
    log: list[str] = []

    def logged(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            log.append(name)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(F, "relu", logged("relu", F.relu))
    monkeypatch.setattr(F, "adaptive_avg_pool2d", logged("pool", F.adaptive_avg_pool2d))
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: log.append(n))
             for n, m in model.named_modules() if not any(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return log


@pytest.fixture(scope="module", params=["preact_resnet18", "preact_resnet34"])
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(arch: str) -> nn.Module:
    return timm.create_model(arch, num_classes=10).eval()


def test_forward_runs_upstreams_module_order(arch: str, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = ORDER[arch].split()
    assert _trace(model, torch.randn(1, 3, 32, 32), monkeypatch) == expected
    assert "bn" not in dict(model.named_modules())  # no final BN before pooling


def test_every_parameter_and_buffer_matches_upstream(arch: str, model: nn.Module) -> None:
    expected = _table(STATE[arch])
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(state) == set(expected)
    assert state == expected and list(state) == list(expected)
    params = {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert params == {k: s for k, s in expected.items() if not k.endswith(BUFFERS)}
    assert model.get_classifier() is model.linear2 and model.pretrained_cfg["classifier"] == "linear2"


def test_upstream_state_dict_loads_into_backbone_and_projection(arch: str, model: nn.Module) -> None:
    """Upstream's ``model.state_dict()`` (with ``head = Linear(512, low_dim)``): ``head.*`` goes to the projection."""
    upstream = {k: torch.randn(s) if s else torch.tensor(7) for k, s in _table(STATE[arch]).items()}
    upstream |= {"head.weight": torch.randn(128, 512), "head.bias": torch.randn(128)}
    net = SelCLNet(model, 128)
    net.backbone.load_state_dict({k: v for k, v in upstream.items() if not k.startswith("head.")}, strict=True)
    net.projection.load_state_dict({k[5:]: v for k, v in upstream.items() if k.startswith("head.")}, strict=True)
    torch.testing.assert_close(net.backbone.linear2.weight, upstream["linear2.weight"])
    torch.testing.assert_close(net.projection.weight, upstream["head.weight"])


def test_identity_shortcut_adds_the_activated_input() -> None:
    """Upstream's ``shortcut = self.shortcut(relu(bn1(x)))``, also when the shortcut is the identity."""
    block = PreActBlock(64, 64).eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        pre = F.relu(block.bn1(x))
        ref = block.conv2(F.relu(block.bn2(block.conv1(pre)))) + pre
        torch.testing.assert_close(block(x), ref, rtol=0, atol=0)
    assert not any(block.shortcut.children())  # upstream's empty nn.Sequential
