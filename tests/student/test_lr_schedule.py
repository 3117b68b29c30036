"""The lr the optimizer uses at every epoch of each paper recipe equals upstream's formula.

Upstream is github.com/ggjy/vision_weak_to_strong (paths below are from its root) and timm 0.6.12,
which it pins. Each expected value is an independent transcription of the upstream formula, written
here without the project's code; the schedule is driven exactly as the trainers drive it
(``scheduler.step(epoch)`` at the start of each epoch, ``scheduler.step_update(n)`` after update
``n``), and the lr is read from the optimizer's parameter groups during each update.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config.schema import OptimConfig, load_config
from pipeline.engine.runtime import RunError
from pipeline.scenarios.sel_cl.pretrain import build_schedule
from pipeline.student.setup import build_optimizer, build_scheduler

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAIN = "classification/train.py (timm 0.6.12 create_scheduler, lr_scheduler.step(epoch + 1) after each epoch)"
STEPS = 3  # updates per epoch in these tests; a per-epoch schedule does not depend on it


def _cosine(e: int, lr: float, warmup_lr: float, warmup: int, min_lr: float, epochs: int) -> float:
    """timm 0.6.12 CosineLRScheduler._get_lr(e), warmup_prefix False, cycle_limit 1 (timm/scheduler/cosine_lr.py)."""
    if e < warmup:
        return warmup_lr + e * (lr - warmup_lr) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * e / epochs))


def _lrs_used(optimizer: torch.optim.Optimizer, scheduler, epochs: int, steps: int) -> list[list[float]]:
    """The lr of the base parameter group (lr_scale 1) at each update, per epoch, driven as the trainers do."""
    used = []
    for epoch in range(epochs):
        scheduler.step(epoch)
        row = []
        for step in range(steps):
            row.append(max(g["lr"] for g in optimizer.param_groups))
            optimizer.step()
            scheduler.step_update(epoch * steps + step + 1)
        used.append(row)
    return used


def _recipe_lrs(config: str, model: nn.Module | None = None) -> tuple[OptimConfig, list[list[float]]]:
    cfg = load_config(CONFIGS / config, [])
    o = cfg.optim
    world = o.batch_size // o.batch_per_process if o.batch_per_process else 1  # the recipe's GPUs: no lr scaling
    opt = build_optimizer(model or nn.Linear(4, 3), o, world=world, num_train=STEPS * o.batch_size)
    assert opt.steps_per_epoch == STEPS and opt.global_batch == o.batch_size
    return o, _lrs_used(opt.optimizer, opt.scheduler, o.epochs, opt.steps_per_epoch)


# (config, epoch, expected lr, upstream file): CIFAR-100 lr 0.2, warm-up 10 from 1e-4, min_lr 2e-3, 240 epochs
CIFAR_ROWS = [(c, e, _cosine(e, 0.2, 1e-4, 10, 2e-3, 240), f"classification/configs/{src}.yaml; {TRAIN}")
              for c, src in (("cifar100/res56_res20_adaptconf.yaml", "cifar_v0"),
                             ("cifar100/vgg13_vgg8_kd.yaml", "cifar_v1"))
              for e in (0, 1, 5, 9, 10, 63, 120, 180, 220, 229, 239)]
# ImageNet: lr 2e-3, warm-up 5 from warmup_lr 1e-4, min_lr 1e-6, 100 epochs
IMAGENET_ROWS = [("imagenet/vitb_mae_res50_adaptconf.yaml", e, _cosine(e, 2e-3, 1e-4, 5, 1e-6, 100),
                  f"classification/configs/imagenet_mae.yaml; {TRAIN}") for e in (0, 1, 4, 5, 50, 98, 99)]
# few-shot classifier: torch MultiStepLR(milestones [90]) stepped after each of epochs 1..100 (0-based e < 90: 0.1)
FS_ROWS = [("few_shot/mini_classifier_adaptconf.yaml", e, 0.1 if e < 90 else 0.01,
            "few_shot_leaerning/utils/__init__.py make_optimizer (MultiStepLR); few_shot_leaerning/train_classifier.py "
            "lr_scheduler.step() after each epoch; config/classifier/train_classifier_mini_kd_adapt_conf.yaml")
           for e in (0, 1, 88, 89, 90, 91, 99)]
# Sel-CL+ fine-tuning: MultiStepLR(milestones=args.M = []) -> a constant lr 1e-3 for every epoch
SEL_FT_ROWS = [("noisy/sel_cl/cifar10_sym20_pr34_selcl_plus_adaptconf.yaml", e, 1e-3,
                "noisy_labels_learning/CIFAR/train_Sel-CL_fine-tuning.py --lr, --M [], MultiStepLR") for e in (0, 1, 69)]


@pytest.mark.parametrize("config,epoch,expected,source", CIFAR_ROWS + IMAGENET_ROWS + FS_ROWS + SEL_FT_ROWS)
def test_recipe_lr_at_epoch(config, epoch, expected, source):
    """Every update of the epoch runs at upstream's lr for that epoch (the schedule steps per epoch)."""
    _, used = _recipe_lrs(config)
    assert used[epoch] == pytest.approx([expected] * STEPS, rel=1e-9, abs=1e-12), source


def test_cifar_recipe_every_epoch_and_the_end():
    """All 240 epochs follow the curve; the last one at min_lr + 8.5e-9."""
    _, used = _recipe_lrs("cifar100/res56_res20_adaptconf.yaml")
    assert [row[0] for row in used] == pytest.approx([_cosine(e, 0.2, 1e-4, 10, 2e-3, 240) for e in range(240)])
    assert used[0][0] == pytest.approx(1e-4) and used[10][0] == pytest.approx(_cosine(10, 0.2, 1e-4, 10, 2e-3, 240))
    assert used[-1][0] == pytest.approx(2e-3, abs=1e-5)


def test_imagenet_recipe_with_layer_decay_ends_at_min_lr():
    """The ViT's head group (lr_scale 1) under layer decay follows upstream's curve, ending at 1.49e-6."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=2, num_classes=10)
    o, used = _recipe_lrs("imagenet/vitb_mae_res50_adaptconf.yaml", vit)
    assert o.layer_decay == 0.65
    assert [row[0] for row in used] == pytest.approx([_cosine(e, 2e-3, 1e-4, 5, 1e-6, 100) for e in range(100)])
    assert used[-1][0] == pytest.approx(1.493e-6, rel=1e-3)  # upstream's last epoch (this project had 1.3e-5)


def test_sel_cl_pretrain_lr_per_update():
    """Sel-CL pre-training steps per update: GradualWarmupScheduler(x100, 5 epochs) over MultiStepLR([125, 200])."""
    # noisy_labels_learning/utils_sel/lr_scheduler.py get_scheduler + GradualWarmupScheduler.get_lr, stepped after
    # every update (utils_sel/utils_noise.py train_uns / train_sel scheduler.step()); --lr 0.1, --epoch 250
    cfg = load_config(CONFIGS / "noisy/sel_cl/cifar10_sym20_pr18_selcl.yaml", [])
    n, w = STEPS, 5 * STEPS
    lin = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(lin.parameters(), lr=cfg.optim.lr)
    used = _lrs_used(optimizer, build_schedule(optimizer, cfg, n), cfg.optim.epochs, n)

    def upstream(t: int) -> float:
        if t <= w:
            return 0.1 / 100 * ((100 - 1) * t / w + 1)
        return 0.1 * 0.1 ** sum(m * n <= t for m in (125, 200))

    flat = [lr for row in used for lr in row]
    assert len(flat) == 250 * n
    assert flat == pytest.approx([upstream(t) for t in range(250 * n)])
    assert (flat[0], flat[w], flat[125 * n - 1], flat[125 * n], flat[200 * n]) == pytest.approx((1e-3, 0.1, 0.1, 0.01, 1e-3))


def test_few_shot_meta_lr_is_constant():
    """The meta stage's lr is upstream's constant 1e-3: train_meta.py's make_optimizer gets no milestones, so no
    scheduler (few_shot_leaerning/config/meta/train_meta_mini_kd_adapt_conf.yaml; MetaTrainer makes none either)."""
    from pipeline.scenarios.few_shot.config import load_few_shot_config

    cfg = load_few_shot_config(CONFIGS / "few_shot/mini_meta_adaptconf.yaml", [])
    assert cfg.meta.lr == pytest.approx(1e-3)


def test_sched_on_updates_samples_the_same_curve():
    """Stepped per update, the cosine is the per-epoch curve at fractional epochs (e + step / steps)."""
    o = OptimConfig(lr=0.05, epochs=4, warmup_epochs=0.5, warmup_lr=1e-4, min_lr=0.0, sched_on_updates=True)
    lin = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(lin.parameters(), lr=o.lr)
    steps = 8
    used = _lrs_used(optimizer, build_scheduler(optimizer, o, steps), o.epochs, steps)
    t_total, warm = o.epochs * steps, round(o.warmup_epochs * steps)
    for e, row in enumerate(used):
        for s, lr in enumerate(row):
            t = e * steps + s
            want = (1e-4 + t * (0.05 - 1e-4) / warm if t < warm
                    else 0.5 * 0.05 * (1 + math.cos(math.pi * t / t_total)))
            assert lr == pytest.approx(want)


def test_fractional_epochs_need_sched_on_updates():
    lin = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(lin.parameters(), lr=0.1)
    with pytest.raises(RunError, match="optim.warmup_epochs=0.5 .*sched_on_updates=true"):
        build_scheduler(optimizer, OptimConfig(warmup_epochs=0.5), 10)
    with pytest.raises(RunError, match=r"optim.milestones=2.5"):
        build_scheduler(optimizer, OptimConfig(schedule="multistep", milestones=[2.5]), 10)


def test_trainer_logs_the_lr_it_used(fmnist_dir, tmp_path):
    """A real run: each epoch's metrics row holds the per-epoch lr upstream's formula gives for that epoch."""
    import json

    from tests.cli_run import ok
    from tests.helpers import fmnist_config

    path = fmnist_config(tmp_path / "c.yaml", fmnist_dir,
                         data={"limit": 400, "test_limit": 200},
                         views={"kind": "pad_crop", "num_views": 1, "pad": 2, "seed": 0},
                         model={"name": "fmnist_linear"},
                         optim={"epochs": 4, "batch_size": 100, "eval_batch_size": 200, "lr": 0.1, "warmup_epochs": 2,
                                "warmup_lr": 1e-3, "min_lr": 1e-3},
                         run={"output": str(tmp_path / "run")})
    ok(["train-teacher", str(path)])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([_cosine(e, 0.1, 1e-3, 2, 1e-3, 4) for e in range(4)])
