"""Every value a paper-recipe config claims to take from the paper's code, against that code.

One table: (config file, key, expected value, upstream file of github.com/ggjy/vision_weak_to_strong the
value comes from). Each config is loaded by its own loader (``load_config``; ``load_few_shot_config`` for
``few-shot meta`` / ``few-shot eval`` configs) and the key must hold exactly the expected value.
Values the configs label as this project's own choice (noisy optimizers, few-shot input size and views,
ImageNet pooling, ...) are deliberately not here; see docs/recipes.md.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.few_shot import load_few_shot_config

ROOT = Path(__file__).resolve().parent.parent

# upstream files (paths in github.com/ggjy/vision_weak_to_strong)
TRAIN = "train.py (argparse defaults; later classification/train.py)"
README = "README.md (training commands, 8 GPUs)"
DIST = "classification/distillers/adaptconf.py"
V0 = "configs/cifar_v0.yaml"
V1 = "classification/configs/cifar_v1.yaml"
MAE = "configs/imagenet_mae.yaml"
FS_CLS = "few_shot_leaerning/config/classifier/train_classifier_mini.yaml"
FS_CLS_KD = "few_shot_leaerning/config/classifier/train_classifier_mini_kd_adapt_conf.yaml"
FS_META_KD = "few_shot_leaerning/config/meta/train_meta_mini_kd_adapt_conf.yaml"
FS_UTILS = "few_shot_leaerning/utils/__init__.py (make_optimizer, adapt_conf_loss)"
FS_README = "few_shot_leaerning/README.md (--res_type / --teacher_res_type)"
FS_MODELS = "few_shot_leaerning/models/resnet.py"
FS_TEST = "few_shot_leaerning/test_few_shot.py (n_way 5, n_query 15, 200 x 4 episodes x 10 test epochs)"
FS_TRAIN_CLS = "few_shot_leaerning/train_classifier.py (n_shots = [1, 5])"
NOISY_KD = "noisy_labels_learning/utils_sel/kd_loss.py + CIFAR/train_Sel-CL_fine-tuning.py (max_epoch = args.epoch + 1)"


def _cifar_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    files = {  # config -> (upstream config file, objective or None for a teacher)
        "teacher_resnet20": (V0, None), "teacher_shufflenetv1": (V0, None), "teacher_vgg8": (V1, None),
        **{f"res56_res20_{o}": (V0, o) for o in ("kd", "augconf", "adaptconf")},
        **{f"res32x4_shufv1_{o}": (V0, o) for o in ("kd", "augconf", "adaptconf")},
        **{f"vgg13_vgg8_{o}": (V1, o) for o in ("kd", "augconf", "adaptconf")},
        **{f"res32x4_shufv1_v1_{o}": (V1, o) for o in ("kd", "augconf", "adaptconf")},
    }
    for name, (src, ob) in files.items():
        f = f"configs/cifar100/{name}.yaml"
        rows += [
            (f, "optim.epochs", 240, src), (f, "optim.lr", 0.2, src), (f, "optim.batch_per_process", 64, src),
            (f, "optim.batch_size", 512, f"{src} batch_size 64 x {README}"), (f, "optim.name", "sgd", src),
            (f, "optim.nesterov", True, f"{src} opt sgd (timm create_optimizer_v2: Nesterov)"),
            (f, "optim.momentum", 0.9, TRAIN), (f, "optim.weight_decay", 5e-4, src), (f, "optim.schedule", "cosine", src),
            (f, "optim.min_lr", 2e-3, src), (f, "optim.warmup_epochs", 10.0, src),
            (f, "views.kind", "random_resized_crop", f"{src} (timm train transform)"),
            (f, "views.scale", [0.08, 1.0], TRAIN), (f, "views.ratio", [0.75, 1.3333333], TRAIN),
            (f, "views.flip", True, f"{TRAIN} --hflip 0.5"),
            (f, "views.crop_pct", 0.8888889, f"{src} crop_pct 0.875 at 32: eval resize 36, crop 32"),
            (f, "augment.label_smoothing", 0.0, src),
            (f, "augment.policy", "auto_augment" if src == V1 else "none", src),
            (f, "augment.mixup", 0.1 if src == V1 else 0.0, src),
            (f, "objective.name", ob or "vanilla", README),
        ]
        if ob:
            rows += [(f, "objective.kd_temperature", 1.0, TRAIN), (f, "objective.gt_weight", 1.0, TRAIN),
                     (f, "objective.kd_weight", 1.0, TRAIN)]
        if ob == "augconf":
            rows += [(f, "objective.rate", 0.3, f"{TRAIN} --superalignment-rate; {DIST} AugConf"),
                     (f, "objective.max_weight", 0.5, f"{TRAIN} --superalignment-threshold; {DIST} AugConf")]
        if ob == "adaptconf":
            rows += [(f, "objective.threshold", 0.5, f"{README} --superalignment-threshold 0.5; {DIST} AdaptConf"),
                     (f, "objective.warmup_rate", 0.0, f"{DIST} AdaptConf (no warm-up)")]
    return rows


def _imagenet_rows() -> list[tuple[str, str, Any, str]]:
    f = "configs/imagenet/vitb_mae_res50_adaptconf.yaml"
    return [
        (f, "optim.name", "adamw", MAE), (f, "optim.lr", 2e-3, MAE), (f, "optim.batch_per_process", 128, MAE),
        (f, "optim.batch_size", 1024, f"{MAE} batch_size 128 x {README}"), (f, "optim.epochs", 100, MAE),
        (f, "optim.warmup_epochs", 5.0, MAE), (f, "optim.min_lr", 1e-6, MAE), (f, "optim.weight_decay", 0.05, MAE),
        (f, "optim.layer_decay", 0.65, MAE), (f, "optim.schedule", "cosine", MAE),
        (f, "augment.policy", "rand_augment", f"{MAE} aa rand-m9-mstd0.5-inc1"), (f, "augment.magnitude", 9, MAE),
        (f, "augment.num_ops", 2, f"{MAE} aa rand-m9 (timm: 2 ops)"), (f, "augment.random_erasing", 0.25, MAE),
        (f, "augment.mixup", 0.8, MAE), (f, "augment.cutmix", 1.0, MAE), (f, "augment.label_smoothing", 0.1, MAE),
        (f, "augment.mix_prob", 1.0, f"{TRAIN} --mixup-prob"), (f, "augment.switch_prob", 0.5, f"{TRAIN} --mixup-switch-prob"),
        (f, "views.kind", "random_resized_crop", f"{TRAIN} (timm train transform)"), (f, "views.scale", [0.08, 1.0], TRAIN),
        (f, "views.ratio", [0.75, 1.3333333], TRAIN), (f, "views.flip", True, f"{TRAIN} --hflip 0.5"),
        (f, "data.image_size", 224, f"{README} --model vit_base_patch16_224"),
        (f, "model.name", "vit_base_patch16_224", README), (f, "model.kwargs.drop_path_rate", 0.1, MAE),
        (f, "model.pretrained_kind", "mae", f"{README} --finetune mae_pretrain_vit_base.pth"),
        (f, "teacher.model", "resnet50", f"{README} --teacher resnet50 (resnet50_a1_0-14fe96d1.pth)"),
        (f, "objective.name", "adaptconf", README), (f, "objective.threshold", 4.0, f"{README} --superalignment-threshold 4.0"),
        (f, "objective.kd_temperature", 1.0, TRAIN), (f, "objective.gt_weight", 1.0, TRAIN),
        (f, "objective.kd_weight", 1.0, TRAIN), (f, "objective.warmup_rate", 0.0, f"{DIST} AdaptConf (no warm-up)"),
    ]


def _noisy_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    paper = {  # setting -> (T, noise mode, rate, source, run script, kd config)
        "cifar10_sym20": (20.0, "symmetric", 0.2, "cifar10", "CIFAR/RunScripts_cifar10_Sel-CL_plus-KD.sh",
                          "kd_config/adapt_conf_kd_kw1_kt20_th05.yaml"),
        "cifar10_asym40": (10.0, "asym_cifar10", 0.4, "cifar10", "CIFAR/RunScripts_cifar10_Sel-CL_plus-KD.sh",
                           "kd_config/adapt_conf_kd_kw1_kt10_th05.yaml"),
        "cifar100_sym20": (1.0, "symmetric", 0.2, "cifar100", "CIFAR/RunScripts_cifar100_Sel-CL_plus-KD.sh",
                           "kd_config/adapt_conf_kd_kw1_kt1_th05.yaml"),
    }
    for st, (temp, mode, rate, source, script, kdc) in paper.items():
        script, kdc = f"noisy_labels_learning/{script}", f"noisy_labels_learning/{kdc}"
        f, t = f"configs/noisy/{st}_adaptconf.yaml", f"configs/noisy/{st}_teacher.yaml"
        rows += [
            (f, "data.source", source, f"{script} --dataset"), (f, "data.noise_mode", mode, f"{script} --noise_type"),
            (f, "data.noise_rate", rate, f"{script} --noise_ratio"), (f, "model.name", "preact_resnet34", f"{script} --network PR34"),
            (t, "model.name", "preact_resnet18", f"{script} --teacher_network PR18"),
            (f, "objective.name", "adaptconf", f"{kdc} kd_loss_type"), (f, "objective.kd_temperature", temp, f"{kdc} temperature"),
            (f, "objective.threshold", 0.5, f"{kdc} superalignment_threshold"), (f, "objective.kd_weight", 1.0, f"{kdc} loss_weight"),
            (f, "objective.gt_weight", 1.0, "noisy_labels_learning/utils_sel/utils_plus.py train_mixup (loss + kd)"),
            (f, "objective.warmup_rate", 0.25, NOISY_KD), (f, "objective.warmup_style", "sel_cl", NOISY_KD),
        ]
    return rows


def _few_shot_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    d = "configs/few_shot"

    def classifier(f: str) -> None:
        nonlocal rows
        rows += [(f, "optim.name", "sgd", FS_CLS), (f, "optim.lr", 0.1, FS_CLS), (f, "optim.momentum", 0.9, FS_UTILS),
                 (f, "optim.nesterov", False, FS_UTILS), (f, "optim.weight_decay", 5e-4, FS_CLS),
                 (f, "optim.epochs", 100, FS_CLS), (f, "optim.batch_size", 128, FS_CLS),
                 (f, "optim.schedule", "multistep", f"{FS_UTILS} MultiStepLR"), (f, "optim.milestones", [90.0], FS_CLS),
                 (f, "optim.decay_rate", 0.1, f"{FS_UTILS} MultiStepLR (gamma 0.1)"), (f, "optim.warmup_epochs", 0.0, FS_UTILS),
                 (f, "data.train_split", "train_phase_train", FS_CLS), (f, "data.test_split", "train_phase_val", FS_CLS)]

    def adaptconf(f: str) -> None:
        nonlocal rows
        rows += [(f, "objective.name", "adaptconf", FS_CLS_KD), (f, "objective.kd_temperature", 10.0, FS_CLS_KD),
                 (f, "objective.threshold", 8.0, FS_CLS_KD), (f, "objective.kd_weight", 1.0, FS_CLS_KD),
                 (f, "objective.gt_weight", 1.0, "few_shot_leaerning/train_classifier.py (CE + kd)"),
                 (f, "objective.warmup_rate", 0.25, FS_UTILS), (f, "objective.warmup_style", "few_shot", FS_UTILS)]

    def meta(f: str) -> None:
        nonlocal rows
        rows += [(f, "meta.epochs", 20, FS_META_KD), (f, "meta.batches_per_epoch", 200, FS_META_KD),
                 (f, "meta.episodes_per_batch", 4, FS_META_KD), (f, "meta.n_way", 5, FS_META_KD),
                 (f, "meta.k_shot", 1, FS_META_KD), (f, "meta.n_query", 15, FS_META_KD), (f, "meta.lr", 1e-3, FS_META_KD),
                 (f, "meta.momentum", 0.9, FS_UTILS), (f, "meta.weight_decay", 5e-4, FS_META_KD),
                 (f, "meta.objective", "adaptconf", FS_META_KD), (f, "meta.kd_temperature", 10.0, FS_META_KD),
                 (f, "meta.threshold", 0.25, FS_META_KD), (f, "meta.kd_weight", 1.0, FS_META_KD),
                 (f, "meta.gt_weight", 1.0, "few_shot_leaerning/train_meta.py (CE + kd)"),
                 (f, "meta.warmup_rate", 0.25, FS_UTILS), (f, "meta.warmup_style", "few_shot", FS_UTILS)]

    def evaluation(f: str) -> None:
        nonlocal rows
        rows += [(f, "episodes.n_way", 5, FS_TEST), (f, "episodes.n_query", 15, FS_TEST),
                 (f, "episodes.episodes", 8000, FS_TEST), (f, "episodes.shots", [1, 5], FS_TRAIN_CLS),
                 (f, "data.test_split", "test", "few_shot_leaerning/config/test_few_shot.yaml")]

    # this project's own pair Conv-4 -> ResNet-12 with the paper's hyper-parameters
    classifier(f"{d}/mini_classifier_teacher.yaml")
    classifier(f"{d}/mini_classifier_adaptconf.yaml")
    adaptconf(f"{d}/mini_classifier_adaptconf.yaml")
    meta(f"{d}/mini_meta_adaptconf.yaml")
    evaluation(f"{d}/mini_eval.yaml")
    # the paper's pairs ResNet-12 / ResNet-18 -> ResNet-36 ("bottle" backbones)
    for t, model in (("r12b", "fs_resnet12_bottle"), ("r18b", "fs_resnet18_bottle")):
        classifier(f"{d}/mini_{t}_classifier_teacher.yaml")
        rows.append((f"{d}/mini_{t}_classifier_teacher.yaml", "model.name", model, f"{FS_README}; {FS_MODELS}"))
        classifier(f"{d}/mini_{t}_r36b_classifier_adaptconf.yaml")
        adaptconf(f"{d}/mini_{t}_r36b_classifier_adaptconf.yaml")
        rows.append((f"{d}/mini_{t}_r36b_classifier_adaptconf.yaml", "model.name", "fs_resnet36_bottle",
                     f"{FS_README}; {FS_MODELS}"))
        meta(f"{d}/mini_{t}_r36b_meta_adaptconf.yaml")
        rows.append((f"{d}/mini_{t}_r36b_meta_adaptconf.yaml", "encoder.checkpoint", "runs/few_shot/mini_r36b",
                     "few_shot_leaerning/train_meta.py (load_encoder -> classifier_mini-imagenet_resnet36_bottle)"))
        evaluation(f"{d}/mini_{t}_r36b_eval.yaml")
    classifier(f"{d}/mini_r36b_classifier.yaml")
    rows.append((f"{d}/mini_r36b_classifier.yaml", "model.name", "fs_resnet36_bottle", f"{FS_README}; {FS_MODELS}"))
    return rows


SEL_PT = "noisy_labels_learning/CIFAR/train_Sel-CL.py (argparse defaults)"
SEL_FT = "noisy_labels_learning/CIFAR/train_Sel-CL_fine-tuning.py (argparse defaults)"
SEL_SCRIPTS = "noisy_labels_learning/CIFAR/RunScripts_cifar{10,100}_Sel-CL.sh"
SEL_KD = "noisy_labels_learning/CIFAR/RunScripts_*_Sel-CL_plus-KD.sh + kd_config/adapt_conf_kd_kw1_kt*_th05.yaml"
SEL_SETTINGS = {  # setting -> (alpha, beta, queue_per_class, KD temperature or None: no upstream KD command)
    "cifar10_sym20": (0.5, 0.25, 1000, 20.0), "cifar10_asym40": (0.5, 0.25, 1000, 10.0),
    "cifar100_sym20": (0.75, 0.35, 100, 1.0), "cifar100_asym40": (0.25, 0.0, 100, None)}


def _sel_cl_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    for setting, (alpha, beta, qpc, temp) in SEL_SETTINGS.items():
        for net in ("pr18", "pr34"):
            f = f"configs/noisy/sel_cl/{setting}_{net}_selcl.yaml"
            rows += [(f, "optim.lr", 0.1, SEL_PT), (f, "optim.momentum", 0.9, SEL_PT),
                     (f, "optim.weight_decay", 1e-4, SEL_PT), (f, "optim.epochs", 250, SEL_PT),
                     (f, "optim.batch_size", 128, SEL_PT), (f, "optim.schedule", "multistep", SEL_PT),
                     (f, "optim.milestones", [125.0, 200.0], SEL_PT), (f, "optim.decay_rate", 0.1, SEL_PT),
                     (f, "sel_cl.low_dim", 128, SEL_PT), (f, "sel_cl.k", 250, SEL_PT),
                     (f, "sel_cl.alpha", alpha, SEL_SCRIPTS), (f, "sel_cl.beta", beta, SEL_SCRIPTS),
                     (f, "sel_cl.queue_per_class", qpc, SEL_SCRIPTS), (f, "sel_cl.uns_queue_size", 10000, SEL_PT),
                     (f, "sel_cl.uns_t", 0.1, SEL_PT), (f, "sel_cl.sup_t", 0.1, SEL_PT),
                     (f, "sel_cl.ema_momentum", 0.999, SEL_PT), (f, "sel_cl.mixup_alpha", 1.0, SEL_PT),
                     (f, "sel_cl.lambda_c", 1.0, SEL_PT), (f, "sel_cl.lambda_s", 0.01, SEL_PT),
                     (f, "sel_cl.sim_grad_clip", 0.25, "noisy_labels_learning/utils_sel/utils_noise.py"),
                     (f, "sel_cl.sup_queue_begin", 3, SEL_PT), (f, "sel_cl.warmup_epochs", 1, SEL_PT),
                     (f, "sel_cl.lr_warmup_epochs", 5, SEL_PT), (f, "sel_cl.lr_warmup_multiplier", 100.0, SEL_PT),
                     (f, "sel_cl.exclude_self", False, "noisy_labels_learning/utils_sel/utils_noise.py pair_selection"),
                     (f, "sel_cl.crop_scale", 0.08, f"{SEL_PT} RandomResizedCrop (torchvision default scale)"),
                     (f, "sel_cl.select_batch_size", 100, "noisy_labels_learning/utils_sel/utils_noise.py"),
                     (f, "model.name", "preact_resnet18" if net == "pr18" else "preact_resnet34", SEL_KD)]
            plus = [f"configs/noisy/sel_cl/{setting}_{net}_selcl_plus.yaml"]
            if net == "pr34" and temp is not None:
                kd = f"configs/noisy/sel_cl/{setting}_pr34_selcl_plus_adaptconf.yaml"
                plus.append(kd)
                rows += [(kd, "objective.name", "adaptconf", SEL_KD), (kd, "objective.kd_temperature", temp, SEL_KD),
                         (kd, "objective.threshold", 0.5, SEL_KD), (kd, "objective.kd_weight", 1.0, SEL_KD),
                         (kd, "objective.warmup_rate", 0.25, NOISY_KD), (kd, "objective.warmup_style", "sel_cl", NOISY_KD)]
            for f in plus:
                rows += [(f, "optim.lr", 0.001, SEL_FT), (f, "optim.momentum", 0.9, SEL_FT),
                         (f, "optim.weight_decay", 1e-4, SEL_FT), (f, "optim.epochs", 70, SEL_FT),
                         (f, "optim.batch_size", 128, SEL_FT), (f, "optim.milestones", [], f"{SEL_FT} --M"),
                         (f, "augment.mixup", 1.0, SEL_FT), (f, "model.pretrained_reset_head", True, SEL_FT),
                         (f, "noisy.label_correction_from", 30, SEL_FT),
                         (f, "noisy.bootstrap", 0.2, "noisy_labels_learning/utils_sel/utils_plus.py")]
    return rows


TABLE = _cifar_rows() + _imagenet_rows() + _noisy_rows() + _few_shot_rows() + _sel_cl_rows()
FEW_SHOT_COMMANDS = ("meta_", "eval")  # configs of `w2s few-shot meta|eval` (their own schema)


@lru_cache(maxsize=None)
def _load(path: str) -> Any:
    name = Path(path).name
    if path.startswith("configs/few_shot/") and any(k in name for k in FEW_SHOT_COMMANDS):
        return load_few_shot_config(ROOT / path)
    return load_config(ROOT / path)


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def test_recipe_values_are_the_papers() -> None:
    """Every row of TABLE: the config loads, and the key holds exactly the paper's value (and its type)."""
    assert len({(p, k) for p, k, _, _ in TABLE}) == len(TABLE), "a (config, key) pair appears twice in TABLE"
    wrong = []
    for path, key, expected, upstream in TABLE:
        got = _get(_load(path), key)
        if got != expected or type(got) is not type(expected):
            wrong.append(f"{path}: {key} = {got!r}, the paper's code has {expected!r} ({upstream})")
    assert not wrong, f"{len(wrong)} of {len(TABLE)} recipe values differ from the paper's code:\n" + "\n".join(wrong)
