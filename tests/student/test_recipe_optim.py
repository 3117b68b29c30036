"""What each paper recipe's optimizer decays and the precision it computes in, as upstream does.

Weight decay: the paper's ``classification/train.py`` builds timm 0.6.12 ``create_optimizer_v2`` with
``filter_bias_and_bn`` at its default (no decay on biases and norm weights); Sel-CL+ fine-tuning
(``noisy_labels_learning/CIFAR/train_Sel-CL_fine-tuning.py``) and the few-shot classifier
(``few_shot_leaerning/utils/__init__.py`` ``make_optimizer``) pass ``model.parameters()`` to a plain
``torch.optim.SGD``, so every parameter decays. Precision: upstream's CIFAR and few-shot runs are fp32
(their README commands pass no ``--amp``; the few-shot code has no autocast), ImageNet is native fp16
with a loss scaler (``--amp``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config.schema import load_config
from pipeline.models import create
from pipeline.student.step import Precision
from pipeline.student.setup import build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _groups(config: str, num_classes: int, size: int) -> tuple[torch.nn.Module, list[dict]]:
    cfg = load_config(CONFIGS / config, [])
    model = create(cfg.model.name, num_classes, 3, **cfg.model.kwargs)
    o = cfg.optim
    world = o.batch_size // o.batch_per_process if o.batch_per_process else 1
    opt = build_optimizer(model, o, world, o.batch_size)
    return model, opt.optimizer.param_groups


def _decay_of(model: torch.nn.Module, groups: list[dict]) -> dict[str, float]:
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("config,classes", [
    ("noisy/sel_cl/cifar10_sym20_pr34_selcl_plus_adaptconf.yaml", 10),
    ("noisy/sel_cl/cifar100_sym20_pr18_selcl_plus.yaml", 100),
    ("few_shot/mini_classifier_adaptconf.yaml", 64),
    ("few_shot/mini_classifier_teacher.yaml", 64),
])
def test_every_parameter_decays_where_upstream_uses_plain_sgd(config, classes):
    model, groups = _groups(config, classes, 32)
    wd = load_config(CONFIGS / config, []).optim.weight_decay
    decay = _decay_of(model, groups)
    assert len(decay) == len(list(model.parameters()))
    assert set(decay.values()) == {wd}, config
    assert any(n.endswith("bias") or ".bn" in n or "norm" in n for n in decay)  # norms and biases are among them


def test_cifar_recipe_exempts_biases_and_norms_like_timm():
    model, groups = _groups("cifar100/res56_res20_adaptconf.yaml", 100, 32)
    decay = _decay_of(model, groups)
    for name, p in model.named_parameters():
        assert decay[name] == (0.0 if p.ndim <= 1 or name.endswith(".bias") else 5e-4), name


def _autocast_of(config: str, device: str) -> Any:
    cfg = load_config(CONFIGS / config, [])
    return Precision(torch.device(device), cfg.run.amp).autocast()


FP32_RECIPES = sorted([*(CONFIGS / "cifar100").glob("*.yaml"), *(CONFIGS / "few_shot").glob("mini*classifier*.yaml")])


def test_cifar_and_few_shot_recipes_default_to_fp32():
    assert {str(p.relative_to(CONFIGS)): load_config(p, []).run.amp for p in FP32_RECIPES} == \
        {str(p.relative_to(CONFIGS)): "none" for p in FP32_RECIPES}


@pytest.mark.parametrize("config,size", [("cifar100/res56_res20_adaptconf.yaml", 32),
                                         ("few_shot/mini_classifier_adaptconf.yaml", 84)])
def test_fp32_recipe_forward_is_float32(config, size):
    """The student's logits under the trainer's autocast are float32: no bf16/fp16 anywhere in the forward."""
    cfg = load_config(CONFIGS / config, [])
    model = create(cfg.model.name, 10, 3, **cfg.model.kwargs).eval()
    with torch.no_grad(), _autocast_of(config, "cpu"):
        out = model(torch.randn(2, 3, size, size))
    assert out.dtype == torch.float32


def test_imagenet_recipe_is_fp16_with_a_loss_scaler():
    """``--amp`` in upstream's ImageNet command: native fp16 autocast on CUDA and a GradScaler (enabled for fp16)."""
    cfg = load_config(CONFIGS / "imagenet/vitb_mae_res50_adaptconf.yaml", [])
    assert cfg.run.amp == "fp16"
    ctx = _autocast_of("imagenet/vitb_mae_res50_adaptconf.yaml", "cuda")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16 and ctx.device == "cuda"
