"""The paper's recipes end to end on tiny data in the real formats, and the pieces they add.

CIFAR-100 configs run their full pipeline (train-teacher, infer-teacher, train-student) on
generated CIFAR pickles with the model swapped for cifar_resnet8; the ImageNet config runs on a
generated ImageFolder of JPEGs (with one corrupt file) with a tiny ViT loaded from a fake MAE
checkpoint carrying the real key names, and a timm-style teacher checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.data.mixing import (
    MixConfig,
    batch_rng,
    draw,
    mix_images,
    mix_targets,
    mix_teacher_logits,
)
from tests.cli_run import invoke, ok
from tests.formats import write_cifar100

ROOT = Path(__file__).resolve().parent.parent




# -- mixing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_mixed_teacher_logits_give_the_mixed_distribution(temp):
    z = torch.randn(6, 7) * 3
    lam = 0.3
    mixed = mix_teacher_logits(z, lam, temp)
    expect = lam * F.softmax(z / temp, -1) + (1 - lam) * F.softmax(z.flip(0) / temp, -1)
    torch.testing.assert_close(F.softmax(mixed / temp, -1), expect, rtol=1e-5, atol=1e-6)


def test_mix_targets_and_cutmix_area():
    y = torch.tensor([0, 1, 2, 3])
    t = mix_targets(y, 4, 0.25, smoothing=0.1)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    assert t[0, 0].item() == pytest.approx(0.25 * 0.925 + 0.75 * 0.025)
    assert t[0, 3].item() == pytest.approx(0.25 * 0.025 + 0.75 * 0.925)
    cfg = MixConfig(cutmix=1.0)
    d = draw(cfg, batch_rng(0, 0, 3))
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 10, 10).contiguous()
    out, lam = mix_images(x, d)
    pasted = (out[0] != x[0]).float().mean().item()
    assert lam == pytest.approx(1 - pasted)


def test_mix_draws_repeat_for_the_same_step():
    cfg = MixConfig(mixup=0.8, cutmix=1.0)
    a, b = draw(cfg, batch_rng(1, 2, 3)), draw(cfg, batch_rng(1, 2, 3))
    assert a == b
    assert draw(MixConfig(), batch_rng(0, 0, 0)) is None


# -- CIFAR-100 recipes ------------------------------------------------------------------------

TINY = ["--set", "run.device=cpu", "--set", "run.amp=none", "--set", "run.channels_last=false",
        "--set", "optim.epochs=1", "--set", "optim.batch_per_process=32", "--set", "optim.eval_batch_size=64",
        "--set", "views.num_views=2", "--set", "teacher.chunk_samples=64"]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), n_train=160, n_test=64)


@pytest.mark.parametrize("row,teacher", [("res56_res20", "resnet20"), ("vgg13_vgg8", "vgg8"),
                                         ("res32x4_shufv1", "shufflenetv1"), ("res32x4_shufv1_v1", "shufflenetv1")])
def test_cifar100_row_full_pipeline(cifar_dir, tmp_path, row, teacher):
    """Every config of a README row: teacher training, one store, then kd / augconf / adaptconf students."""
    common = TINY + ["--set", f"data.data_dir={cifar_dir}", "--set", "model.name=cifar_resnet8"]
    tdir, store = tmp_path / "teacher", tmp_path / "store"
    t = ok(["train-teacher", str(ROOT / f"configs/cifar100/teacher_{teacher}.yaml"), *common,
             "--set", f"run.output={tdir}"])
    assert t["train_samples"] == 160
    where = ["--set", f"teacher.checkpoint={tdir}", "--set", f"teacher.store={store}"]
    first = ROOT / f"configs/cifar100/{row}_kd.yaml"
    assert ok(["infer-teacher", str(first), *common, *where])["computed_chunks"] == 3 * 3
    for ob in ("kd", "augconf", "adaptconf"):
        res = ok(["train-student", str(ROOT / f"configs/cifar100/{row}_{ob}.yaml"), *common, *where,
                   "--set", f"run.output={tmp_path / ob}"])
        assert res["objective"] == ob and res["teacher_mode"] == "store"


def test_cifar100_configs_hold_the_paper_hyper_parameters():
    from pipeline.config.schema import load_config
    cfg = load_config(ROOT / "configs/cifar100/vgg13_vgg8_adaptconf.yaml")
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.batch_per_process) == (240, 0.2, 512, 64)
    assert (cfg.optim.weight_decay, cfg.optim.min_lr, cfg.optim.warmup_epochs, cfg.optim.nesterov) == (5e-4, 2e-3, 10, True)
    assert cfg.objective.threshold == 0.5 and cfg.augment.policy == "auto_augment" and cfg.augment.mixup == 0.1
    assert cfg.views.kind == "random_resized_crop" and cfg.views.crop_pct == pytest.approx(32 / 36)
    aug = load_config(ROOT / "configs/cifar100/res56_res20_augconf.yaml")
    assert aug.objective.rate == 0.3 and aug.augment.policy == "none"


def test_speed_switches_smoke(cifar_dir, tmp_path):
    """bf16 autocast, channels_last and torch.compile run on CPU; fp16 is refused off CUDA."""
    common = TINY + ["--set", f"data.data_dir={cifar_dir}", "--set", "model.name=cifar_resnet8"]
    cfg = str(ROOT / "configs/cifar100/teacher_resnet20.yaml")
    res = ok(["train-teacher", cfg, *common, "--set", "run.amp=bf16", "--set", "run.channels_last=true",
               "--set", "run.compile=true", "--set", "run.compile_backend=aot_eager", "--set", f"run.output={tmp_path / 'a'}"])
    assert 0 <= res["test_acc"] <= 1
    bad = invoke(["train-teacher", cfg, *common, "--set", "run.amp=fp16", "--set", f"run.output={tmp_path / 'b'}"])
    assert bad.exit_code == 2 and "needs a CUDA device" in bad.output


# -- ImageNet recipe on an ImageFolder ----------------------------------------------------------

def _jpeg(path: Path, rng: np.random.Generator, h: int, w: int) -> None:
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("val", 4)):
        for c in ("n01440764", "n01443537", "n01484850"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                _jpeg(d / f"{c}_{i}.JPEG", rng, int(rng.integers(36, 80)), int(rng.integers(36, 80)))
    corrupt = root / "train" / "n01443537" / "broken.JPEG"
    corrupt.write_bytes((root / "train" / "n01443537" / "n01443537_0.JPEG").read_bytes()[:300])
    return root


def _fake_mae_checkpoint(path: Path) -> None:
    """An MAE pre-training checkpoint layout (encoder + decoder + mask_token + norm) for a tiny ViT."""
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, global_pool="token")
    state = {k: v for k, v in vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 1, 128)
    state["decoder_embed.weight"] = torch.zeros(128, 192)
    state["decoder_pos_embed"] = torch.zeros(1, 17, 128)
    torch.save({"model": state}, path)


def _timm_teacher_checkpoint(path: Path) -> None:
    model = timm.create_model("cifar_resnet8", num_classes=3)
    torch.save({"state_dict": model.state_dict(), "epoch": 5}, path)


def test_image_folder_corrupt_file_is_listed(image_folder, tmp_path):
    res = invoke(["train-teacher", str(ROOT / "configs/cifar100/teacher_resnet20.yaml"),
                              "--set", "data.source=image_folder", "--set", f"data.data_dir={image_folder}",
                              "--set", "data.test_split=val", "--set", "run.device=cpu", "--set", f"run.output={tmp_path / 'x'}"])
    assert res.exit_code == 2
    assert "broken.JPEG" in res.output and "skip_corrupt" in res.output


def test_imagenet_recipe_on_image_folder(image_folder, tmp_path):
    """MAE ViT student <- timm-checkpoint teacher: stage 1 + stage 2 with the recipe's augmentations."""
    mae, teacher = tmp_path / "mae.pth", tmp_path / "teacher.pth"
    _fake_mae_checkpoint(mae)
    _timm_teacher_checkpoint(teacher)
    cfg = str(ROOT / "configs/imagenet/vitb_mae_res50_adaptconf.yaml")
    common = ["--set", f"data.data_dir={image_folder}", "--set", "data.skip_corrupt=true", "--set", "data.image_size=32",
              "--set", "model.name=vit_tiny_patch16_224",
              "--set", "model.kwargs={drop_path_rate: 0.1, global_pool: avg, fc_norm: true, img_size: 32, patch_size: 8}",
              "--set", f"model.pretrained={mae}", "--set", "teacher.model=cifar_resnet8",
              "--set", f"teacher.checkpoint={teacher}", "--set", f"teacher.store={tmp_path / 'store'}",
              "--set", "teacher.chunk_samples=16", "--set", "views.num_views=2", "--set", "run.device=cpu",
              "--set", "run.amp=none", "--set", "optim.epochs=1", "--set", "optim.batch_per_process=12",
              "--set", "optim.eval_batch_size=12", "--set", f"run.output={tmp_path / 'run'}"]
    stage1 = ok(["infer-teacher", cfg, *common])
    assert stage1["computed_chunks"] == 3 * 3
    res = ok(["train-student", cfg, *common])
    assert res["train_samples"] == 36 and res["test_samples"] == 12
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["weight_mean"] > 0 and np.isfinite(rows[-1]["loss"])
