"""Every value a paper-recipe config claims to take from the paper's code, against that code.

One table: (config file, key, expected value, upstream file of github.com/ggjy/vision_weak_to_strong the
value comes from). Each config is loaded by its own loader (``load_config``; ``load_few_shot_config`` for
``few-shot meta`` / ``few-shot eval`` configs) and the key must hold exactly the expected value.
Upstream files are cited by their path from that repository's root, and by what sets the value there:
``FILE (argparse defaults) --arg`` is an argument's default that no upstream command passes,
``SCRIPT.sh --arg`` / ``README.md ... --arg`` a value a command passes, ``FILE.yaml key`` a config file's entry,
``FILE function`` the code itself.
Values the configs label as this project's own choice (noisy optimizers, few-shot input size and views,
ImageNet pooling, the label-noise seed, ...) are deliberately not here; see docs/recipes.md.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.config.schema import load_config
from pipeline.scenarios.few_shot import load_few_shot_config

ROOT = Path(__file__).resolve().parents[2]

# upstream files (paths from the root of github.com/ggjy/vision_weak_to_strong)
TRAIN_PY = "classification/train.py"
TRAIN = f"{TRAIN_PY} (argparse defaults)"
README = "README.md (training commands, run in classification/ on 8 GPUs: --nproc_per_node=8)"
DIST = "classification/distillers/adaptconf.py"
DISTILLERS = {  # --distiller NAME: the class registered under NAME (classification/distillers/registry.py lower-cases it)
    "vanilla": "classification/distillers/_base.py Vanilla", "kd": "classification/distillers/kd.py KD",
    "augconf": f"{DIST} AugConf", "adaptconf": f"{DIST} AdaptConf"}
TIMM_TRAIN = f"{TRAIN_PY} create_loader(is_training=True) (timm 0.6.12 transforms_imagenet_train: RandomResizedCrop)"
V0 = "classification/configs/cifar_v0.yaml"
V1 = "classification/configs/cifar_v1.yaml"
MAE = "classification/configs/imagenet_mae.yaml"
FS_CLS = "few_shot_leaerning/config/classifier/train_classifier_mini.yaml"
FS_CLS_KD = "few_shot_leaerning/config/classifier/train_classifier_mini_kd_adapt_conf.yaml"
FS_META_KD = "few_shot_leaerning/config/meta/train_meta_mini_kd_adapt_conf.yaml"
FS_UTILS = "few_shot_leaerning/utils/__init__.py (make_optimizer, adapt_conf_loss)"
FS_KD_UTILS = "few_shot_leaerning/utils/kd_utils.py get_kd_loss (loss += loss_weight * (kd + align))"
FS_README = "few_shot_leaerning/README.md (--res_type / --teacher_res_type)"
FS_MODELS = "few_shot_leaerning/models/resnet.py"
FS_TEST = ("few_shot_leaerning/test_few_shot.py (n_way 5, n_query 15, n_batch 200 x ep_per_batch 4 episodes,"
           " argparse default --test-epochs 10)")
FS_TRAIN_CLS = "few_shot_leaerning/train_classifier.py (n_shots = [1, 5])"
NOISY = "noisy_labels_learning/CIFAR"
NOISY_DATASET = f"{NOISY}/dataset/cifar_dataset.py"
NOISY_KD = ("noisy_labels_learning/utils_sel/kd_loss.py adapt_conf_loss + "
            f"{NOISY}/train_Sel-CL_fine-tuning.py (max_epoch = args.epoch + 1)")
NOISY_PLUS = "noisy_labels_learning/utils_sel/utils_plus.py"
README_COMMANDS = {("res56_res20", "adaptconf"), ("vgg13_vgg8", "kd"), ("vgg13_vgg8", "adaptconf")}


def _noise_type(script: str, mode: str) -> str:
    """Where a noise mode comes from: the script's --noise_type, and for asymmetric noise the dataset's flips."""
    if mode == "symmetric":
        return f"{script} --noise_type symmetric ({NOISY_DATASET} random_in_noise)"
    cls = "Cifar10Train" if mode == "asym_cifar10" else "Cifar100Train"
    return f"{script} --noise_type asymmetric ({NOISY_DATASET} {cls}.real_in_noise)"


def _cifar_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    files = {  # config -> (upstream config file, pair or None for a teacher, objective or None for a teacher)
        "teacher_resnet20": (V0, None, None), "teacher_shufflenetv1": (V0, None, None), "teacher_vgg8": (V1, None, None),
        **{f"{p}_{o}": (src, p, o) for p, src in (("res56_res20", V0), ("res32x4_shufv1", V0), ("vgg13_vgg8", V1),
                                                   ("res32x4_shufv1_v1", V1))
           for o in ("kd", "augconf", "adaptconf")},
    }
    for name, (src, pair, ob) in files.items():
        f = f"configs/cifar100/{name}.yaml"
        if ob is None:
            objective = f"{DISTILLERS['vanilla']} (README.md gives no teacher command, only the released checkpoints)"
        elif (pair, ob) in README_COMMANDS:
            objective = f"{README} --distiller {ob}; {DISTILLERS[ob]}"
        else:
            objective = f"{TRAIN_PY} --distiller {ob}: {DISTILLERS[ob]} (README.md results table; no README command)"
        rows += [
            (f, "optim.epochs", 240, f"{src} epochs"), (f, "optim.lr", 0.2, f"{src} lr"),
            (f, "optim.batch_per_process", 64, f"{src} batch_size"),
            (f, "optim.batch_size", 512, f"{src} batch_size 64 x 8 GPUs ({README})"), (f, "optim.name", "sgd", f"{src} opt"),
            (f, "optim.nesterov", True, f"{src} opt sgd ({TRAIN_PY} create_optimizer_v2; timm 0.6.12: SGD nesterov=True)"),
            (f, "optim.momentum", 0.9, f"{TRAIN} --momentum"), (f, "optim.weight_decay", 5e-4, f"{src} weight_decay"),
            (f, "optim.schedule", "cosine", f"{src} sched"),
            (f, "optim.min_lr", 2e-3, f"{src} min_lr"), (f, "optim.warmup_epochs", 10.0, f"{src} warmup_epochs"),
            (f, "views.kind", "random_resized_crop", TIMM_TRAIN),
            (f, "views.scale", [0.08, 1.0], f"{TRAIN} --scale"), (f, "views.ratio", [0.75, 1.3333333], f"{TRAIN} --ratio"),
            (f, "views.flip", True, f"{TRAIN} --hflip 0.5"),
            (f, "views.crop_pct", 0.8888889, f"{src} crop_pct 0.875 at img_size 32 (timm eval: resize int(32 / 0.875) = 36,"
                                             " centre crop 32)"),
            (f, "augment.label_smoothing", 0.0, f"{src} smoothing"),
            (f, "augment.policy", "auto_augment" if src == V1 else "none",
             f"{V1} aa original-mstd0.5" if src == V1 else f"{TRAIN} --aa None ({V0} sets no aa)"),
            (f, "augment.mixup", 0.1 if src == V1 else 0.0,
             f"{V1} mixup" if src == V1 else f"{TRAIN} --mixup 0.0 ({V0} sets no mixup)"),
            (f, "objective.name", ob or "vanilla", objective),
        ]
        if ob:
            rows += [(f, "objective.kd_temperature", 1.0, f"{TRAIN} --kd-temperature"),
                     (f, "objective.gt_weight", 1.0, f"{TRAIN} --gt-loss-weight"),
                     (f, "objective.kd_weight", 1.0, f"{TRAIN} --kd-loss-weight")]
        if ob == "augconf":
            rows += [(f, "objective.rate", 0.3, f"{TRAIN} --superalignment-rate; {DIST} AugConf"),
                     (f, "objective.max_weight", 0.5, f"{TRAIN} --superalignment-threshold; {DIST} AugConf")]
        if ob == "adaptconf":
            threshold = (f"{README} --superalignment-threshold 0.5" if (pair, ob) in README_COMMANDS
                         else f"{TRAIN} --superalignment-threshold 0.5")
            rows += [(f, "objective.threshold", 0.5, f"{threshold}; {DIST} AdaptConf"),
                     (f, "objective.warmup_rate", 0.0, f"{DIST} AdaptConf (no warm-up)")]
    return rows


def _imagenet_rows() -> list[tuple[str, str, Any, str]]:
    f = "configs/imagenet/vitb_mae_res50_adaptconf.yaml"
    return [
        (f, "optim.name", "adamw", f"{MAE} opt"), (f, "optim.lr", 2e-3, f"{MAE} lr"),
        (f, "optim.batch_per_process", 128, f"{MAE} batch_size"),
        (f, "optim.batch_size", 1024, f"{MAE} batch_size 128 x 8 GPUs ({README})"), (f, "optim.epochs", 100, f"{MAE} epochs"),
        (f, "optim.warmup_epochs", 5.0, f"{MAE} warmup_epochs"), (f, "optim.min_lr", 1e-6, f"{MAE} min_lr"),
        (f, "optim.weight_decay", 0.05, f"{MAE} weight_decay"),
        (f, "optim.layer_decay", 0.65, f"{MAE} layer_decay"), (f, "optim.schedule", "cosine", f"{MAE} sched"),
        (f, "augment.policy", "rand_augment", f"{MAE} aa rand-m9-mstd0.5-inc1"), (f, "augment.magnitude", 9, f"{MAE} aa rand-m9"),
        (f, "augment.num_ops", 2, f"{MAE} aa rand-m9-mstd0.5-inc1 (timm 0.6.12 rand_augment_transform: 2 ops by default)"),
        (f, "augment.random_erasing", 0.25, f"{MAE} reprob"),
        (f, "augment.mixup", 0.8, f"{MAE} mixup"), (f, "augment.cutmix", 1.0, f"{MAE} cutmix"),
        (f, "augment.label_smoothing", 0.1, f"{MAE} smoothing"),
        (f, "augment.mix_prob", 1.0, f"{TRAIN} --mixup-prob"), (f, "augment.switch_prob", 0.5, f"{TRAIN} --mixup-switch-prob"),
        (f, "views.kind", "random_resized_crop", TIMM_TRAIN), (f, "views.scale", [0.08, 1.0], f"{TRAIN} --scale"),
        (f, "views.ratio", [0.75, 1.3333333], f"{TRAIN} --ratio"), (f, "views.flip", True, f"{TRAIN} --hflip 0.5"),
        (f, "data.image_size", 224, f"{README} --model vit_base_patch16_224 (timm's input size; {MAE} sets no img_size)"),
        (f, "model.name", "vit_base_patch16_224", f"{README} --model"), (f, "model.kwargs.drop_path_rate", 0.1, f"{MAE} drop_path"),
        (f, "model.pretrained_kind", "mae", f"{README} --finetune mae_pretrain_vit_base.pth"),
        (f, "teacher.model", "resnet50", f"{README} --teacher resnet50 --teacher-pretrained resnet50_a1_0-14fe96d1.pth"),
        (f, "objective.name", "adaptconf", f"{README} --distiller adaptconf; {DISTILLERS['adaptconf']}"),
        (f, "objective.threshold", 4.0, f"{README} --superalignment-threshold 4.0"),
        (f, "objective.kd_temperature", 1.0, f"{TRAIN} --kd-temperature"), (f, "objective.gt_weight", 1.0, f"{TRAIN} --gt-loss-weight"),
        (f, "objective.kd_weight", 1.0, f"{TRAIN} --kd-loss-weight"),
        (f, "objective.warmup_rate", 0.0, f"{DIST} AdaptConf (no warm-up)"),
    ]


def _noisy_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    paper = {  # setting -> (T, noise mode, rate, source, run script, kd config)
        "cifar10_sym20": (20.0, "symmetric", 0.2, "cifar10", "RunScripts_cifar10_Sel-CL_plus-KD.sh",
                          "kd_config/adapt_conf_kd_kw1_kt20_th05.yaml"),
        "cifar10_asym40": (10.0, "asym_cifar10", 0.4, "cifar10", "RunScripts_cifar10_Sel-CL_plus-KD.sh",
                           "kd_config/adapt_conf_kd_kw1_kt10_th05.yaml"),
        "cifar100_sym20": (1.0, "symmetric", 0.2, "cifar100", "RunScripts_cifar100_Sel-CL_plus-KD.sh",
                           "kd_config/adapt_conf_kd_kw1_kt1_th05.yaml"),
    }
    for st, (temp, mode, rate, source, script, kdc) in paper.items():
        script, kdc = f"{NOISY}/{script}", f"noisy_labels_learning/{kdc}"
        f, t = f"configs/noisy/{st}_adaptconf.yaml", f"configs/noisy/{st}_teacher.yaml"
        rows += [
            (f, "data.source", source, f"{script} --dataset"), (f, "data.noise_mode", mode, _noise_type(script, mode)),
            (f, "data.noise_rate", rate, f"{script} --noise_ratio"), (f, "model.name", "preact_resnet34", f"{script} --network PR34"),
            (t, "model.name", "preact_resnet18", f"{script} --teacher_network PR18"),
            (f, "objective.name", "adaptconf", f"{kdc} kd_loss_type"), (f, "objective.kd_temperature", temp, f"{kdc} temperature"),
            (f, "objective.threshold", 0.5, f"{kdc} superalignment_threshold"), (f, "objective.kd_weight", 1.0, f"{kdc} loss_weight"),
            (f, "objective.gt_weight", 1.0, f"{NOISY_PLUS} train_mixup (loss = lossClassif.mean(); loss += loss_kd.mean())"),
            (f, "objective.warmup_rate", 0.25, NOISY_KD), (f, "objective.warmup_style", "sel_cl", NOISY_KD),
        ]
    return rows


def _few_shot_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    d = "configs/few_shot"

    def classifier(f: str) -> None:
        nonlocal rows
        rows += [(f, "optim.name", "sgd", f"{FS_CLS} optimizer"), (f, "optim.lr", 0.1, f"{FS_CLS} optimizer_args lr"),
                 (f, "optim.momentum", 0.9, f"{FS_UTILS} SGD(momentum=0.9)"),
                 (f, "optim.nesterov", False, f"{FS_UTILS} SGD (torch's default nesterov=False)"),
                 (f, "optim.weight_decay", 5e-4, f"{FS_CLS} optimizer_args weight_decay"),
                 (f, "optim.epochs", 100, f"{FS_CLS} max_epoch"), (f, "optim.batch_size", 128, f"{FS_CLS} batch_size"),
                 (f, "optim.schedule", "multistep", f"{FS_UTILS} MultiStepLR"),
                 (f, "optim.milestones", [90.0], f"{FS_CLS} optimizer_args milestones"),
                 (f, "optim.decay_rate", 0.1, f"{FS_UTILS} MultiStepLR(optimizer, milestones): torch's default gamma 0.1"),
                 (f, "optim.warmup_epochs", 0.0, f"{FS_UTILS} make_optimizer (no warm-up)"),
                 (f, "data.train_split", "train_phase_train",
                  f"{FS_CLS} train_dataset_args split train (few_shot_leaerning/datasets/mini_imagenet.py: train -> "
                  "train_phase_train)"),
                 (f, "data.test_split", "train_phase_val", f"{FS_CLS} val_dataset_args split")]

    def adaptconf(f: str) -> None:
        nonlocal rows
        rows += [(f, "objective.name", "adaptconf", f"{FS_CLS_KD} kd_loss_config loss_type adapt_conf"),
                 (f, "objective.kd_temperature", 10.0, f"{FS_CLS_KD} kd_loss_config temperature"),
                 (f, "objective.threshold", 8.0, f"{FS_CLS_KD} kd_loss_config threshold"),
                 (f, "objective.kd_weight", 1.0, f"{FS_CLS_KD} kd_loss_config loss_weight"),
                 (f, "objective.gt_weight", 1.0, f"few_shot_leaerning/train_classifier.py loss = F.cross_entropy; {FS_KD_UTILS}"),
                 (f, "objective.warmup_rate", 0.25, FS_UTILS), (f, "objective.warmup_style", "few_shot", FS_UTILS)]

    def meta(f: str) -> None:
        nonlocal rows
        rows += [(f, "meta.epochs", 20, f"{FS_META_KD} max_epoch"), (f, "meta.batches_per_epoch", 200, f"{FS_META_KD} train_batches"),
                 (f, "meta.episodes_per_batch", 4, f"{FS_META_KD} ep_per_batch"), (f, "meta.n_way", 5, f"{FS_META_KD} n_way"),
                 (f, "meta.k_shot", 1, f"{FS_META_KD} n_shot"), (f, "meta.n_query", 15, f"{FS_META_KD} n_query"),
                 (f, "meta.lr", 1e-3, f"{FS_META_KD} optimizer_args lr"), (f, "meta.momentum", 0.9, f"{FS_UTILS} SGD(momentum=0.9)"),
                 (f, "meta.weight_decay", 5e-4, f"{FS_META_KD} optimizer_args weight_decay"),
                 (f, "meta.objective", "adaptconf", f"{FS_META_KD} kd_loss_config loss_type adapt_conf"),
                 (f, "meta.kd_temperature", 10.0, f"{FS_META_KD} kd_loss_config temperature"),
                 (f, "meta.threshold", 0.25, f"{FS_META_KD} kd_loss_config threshold"),
                 (f, "meta.kd_weight", 1.0, f"{FS_META_KD} kd_loss_config loss_weight"),
                 (f, "meta.gt_weight", 1.0, f"few_shot_leaerning/train_meta.py loss = F.cross_entropy; {FS_KD_UTILS}"),
                 (f, "meta.warmup_rate", 0.25, FS_UTILS), (f, "meta.warmup_style", "few_shot", FS_UTILS)]

    def evaluation(f: str) -> None:
        nonlocal rows
        rows += [(f, "episodes.n_way", 5, FS_TEST), (f, "episodes.n_query", 15, FS_TEST),
                 (f, "episodes.episodes", 8000, FS_TEST), (f, "episodes.shots", [1, 5], FS_TRAIN_CLS),
                 (f, "data.test_split", "test", "few_shot_leaerning/config/test_few_shot.yaml dataset_args split")]

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
                     f"{FS_META_KD} load_encoder, rewritten by few_shot_leaerning/train_meta.py --res_type resnet36_bottle"
                     " (few_shot_leaerning/README.md): classifier_mini-imagenet_resnet36_bottle"))
        evaluation(f"{d}/mini_{t}_r36b_eval.yaml")
    classifier(f"{d}/mini_r36b_classifier.yaml")
    rows.append((f"{d}/mini_r36b_classifier.yaml", "model.name", "fs_resnet36_bottle", f"{FS_README}; {FS_MODELS}"))
    return rows


SEL_PT_PY = f"{NOISY}/train_Sel-CL.py"
SEL_FT_PY = f"{NOISY}/train_Sel-CL_fine-tuning.py"
SEL_PT = f"{SEL_PT_PY} (argparse defaults)"
SEL_FT = f"{SEL_FT_PY} (argparse defaults)"
SEL_NOISE = "noisy_labels_learning/utils_sel/utils_noise.py"
SEL_NORM = {  # main of both scripts: transforms.Normalize(mean, std), in the train and the test transform
    "cifar10": ("CIFAR-10", [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ("CIFAR-100", [0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])}
SEL_SETTINGS = {  # setting -> (noise mode, rate, alpha, beta, queue_per_class, KD temperature or None: no upstream KD command)
    "cifar10_sym20": ("symmetric", 0.2, 0.5, 0.25, 1000, 20.0), "cifar10_asym40": ("asym_cifar10", 0.4, 0.5, 0.25, 1000, 10.0),
    "cifar100_sym20": ("symmetric", 0.2, 0.75, 0.35, 100, 1.0), "cifar100_asym40": ("asym_cifar100", 0.4, 0.25, 0.0, 100, None)}


def _sel_script(dataset: str, stage: str) -> str:
    """Upstream's run script of a stage: ``""`` Sel-CL, ``"_plus"`` Sel-CL+, ``"_plus-KD"`` Sel-CL+ with a teacher."""
    return f"{NOISY}/RunScripts_{dataset}_Sel-CL{stage}.sh"


def _sel_data(f: str, dataset: str, mode: str, rate: float, script: str, script_py: str) -> list[tuple[str, str, Any, str]]:
    """The data, its noise and the normalization of one stage's config (``script`` runs ``script_py``)."""
    name, mean, std = SEL_NORM[dataset]
    if dataset == "cifar100" or script.endswith("_plus-KD.sh"):
        source = f"{script} --dataset {name}"
    else:
        source = f"{script_py} (argparse defaults) --dataset {name} ({script} passes no --dataset)"
    return [(f, "data.source", dataset, source), (f, "data.noise_mode", mode, _noise_type(script, mode)),
            (f, "data.noise_rate", rate, f"{script} --noise_ratio"),
            (f, "model.mean", mean, f"{script_py} main: {name} Normalize mean (train and test transforms)"),
            (f, "model.std", std, f"{script_py} main: {name} Normalize std (train and test transforms)")]


def _sel_cl_rows() -> list[tuple[str, str, Any, str]]:
    rows: list[tuple[str, str, Any, str]] = []
    for setting, (mode, rate, alpha, beta, qpc, temp) in SEL_SETTINGS.items():
        dataset = setting.split("_")[0]
        run, plus_run, kd_run = (_sel_script(dataset, stage) for stage in ("", "_plus", "_plus-KD"))

        def pt(arg: str) -> str:
            return f"{SEL_PT} {arg}"

        def ft(arg: str) -> str:
            return f"{SEL_FT} {arg}"

        def selection(arg: str) -> str:  # alpha, beta, queue_per_class: only the CIFAR-100 script passes them
            return f"{run} {arg}" if dataset == "cifar100" else f"{SEL_PT} {arg} ({run} passes none)"

        for net in ("pr18", "pr34"):
            f = f"configs/noisy/sel_cl/{setting}_{net}_selcl.yaml"
            network = (f"{run} --network PR18" if net == "pr18" else
                       f"{kd_run} --network PR34 ({SEL_FT_PY} init_model loads its PR34 Sel-CL run; no upstream script"
                       f" runs {SEL_PT_PY} --network PR34)")
            rows += _sel_data(f, dataset, mode, rate, run, SEL_PT_PY)
            rows += [(f, "model.name", "preact_resnet18" if net == "pr18" else "preact_resnet34", network),
                     (f, "optim.name", "sgd", f"{SEL_PT_PY} main: optim.SGD"),
                     (f, "optim.nesterov", False, f"{SEL_PT_PY} main: optim.SGD (torch's default nesterov=False)"),
                     (f, "optim.lr", 0.1, pt("--lr")), (f, "optim.momentum", 0.9, pt("--momentum")),
                     (f, "optim.weight_decay", 1e-4, pt("--wd")), (f, "optim.epochs", 250, pt("--epoch")),
                     (f, "optim.batch_size", 128, pt("--batch_size")), (f, "optim.schedule", "multistep", pt("--lr-scheduler step")),
                     (f, "optim.milestones", [125.0, 200.0], pt("--lr-decay-epochs")),
                     (f, "optim.decay_rate", 0.1, pt("--lr-decay-rate")),
                     (f, "sel_cl.low_dim", 128, pt("--low_dim")), (f, "sel_cl.k", 250, pt("--k_val")),
                     (f, "sel_cl.alpha", alpha, selection("--alpha")), (f, "sel_cl.beta", beta, selection("--beta")),
                     (f, "sel_cl.queue_per_class", qpc, selection("--queue_per_class")),
                     (f, "sel_cl.uns_queue_size", 10000, pt("--uns_queue_k")),
                     (f, "sel_cl.uns_t", 0.1, pt("--uns_t")), (f, "sel_cl.sup_t", 0.1, pt("--sup_t")),
                     (f, "sel_cl.ema_momentum", 0.999, pt("--alpha_moving")), (f, "sel_cl.mixup_alpha", 1.0, pt("--alpha_m")),
                     (f, "sel_cl.lambda_c", 1.0, pt("--lambda_c")), (f, "sel_cl.lambda_s", 0.01, pt("--lambda_s")),
                     (f, "sel_cl.sim_grad_clip", 0.25, f"{SEL_NOISE} train_sel clip_grad_norm_(max_norm=0.25)"),
                     (f, "sel_cl.sup_queue_begin", 3, pt("--sup_queue_begin")),
                     (f, "sel_cl.warmup_epochs", 1, pt("--warmup-epoch (--warmup_way uns)")),
                     (f, "sel_cl.lr_warmup_epochs", 5, pt("--lr-warmup-epoch")),
                     (f, "sel_cl.lr_warmup_multiplier", 100.0, pt("--lr-warmup-multiplier")),
                     (f, "sel_cl.exclude_self", False, f"{SEL_NOISE} pair_selection (own row set to -1 in the first batch only)"),
                     (f, "sel_cl.crop_scale", 0.08,
                      f"{SEL_PT_PY} main: RandomResizedCrop(32) (--DA complex; torchvision's default scale (0.08, 1))"),
                     (f, "sel_cl.select_batch_size", 100, f"{SEL_NOISE} pair_selection DataLoader(batch_size=100)")]
            plus = [(f"configs/noisy/sel_cl/{setting}_{net}_selcl_plus.yaml", plus_run)]
            if net == "pr18":
                rows.append((plus[0][0], "model.name", "preact_resnet18", f"{plus_run} --network PR18"))
            if net == "pr34" and temp is not None:
                kd = f"configs/noisy/sel_cl/{setting}_pr34_selcl_plus_adaptconf.yaml"
                kdc = f"noisy_labels_learning/kd_config/adapt_conf_kd_kw1_kt{temp:g}_th05.yaml"
                kd_arg = f"--kd_config {kdc.removeprefix('noisy_labels_learning/')} ({kdc})"
                plus.append((kd, kd_run))
                rows += [(kd, "model.name", "preact_resnet34", f"{kd_run} --network PR34"),
                         (kd, "teacher.checkpoint", f"runs/noisy/{setting}/pr18_selcl",
                          f"{kd_run} --teacher_network PR18: {SEL_FT_PY} main loads"
                          " exp_path.replace(--network, --teacher_network)/Sel-CL_model.pth, the PR18 Sel-CL run"),
                         (kd, "objective.name", "adaptconf", f"{kd_run} {kd_arg}: kd_loss_type adapt_conf"),
                         (kd, "objective.kd_temperature", temp, f"{kdc} temperature"),
                         (kd, "objective.threshold", 0.5, f"{kdc} superalignment_threshold"),
                         (kd, "objective.kd_weight", 1.0, f"{kdc} loss_weight"),
                         (kd, "objective.warmup_rate", 0.25, NOISY_KD), (kd, "objective.warmup_style", "sel_cl", NOISY_KD)]
            for f, script in plus:
                rows += _sel_data(f, dataset, mode, rate, script, SEL_FT_PY)
                rows += [(f, "optim.name", "sgd", f"{SEL_FT_PY} main: optim.SGD"),
                         (f, "optim.nesterov", False, f"{SEL_FT_PY} main: optim.SGD (torch's default nesterov=False)"),
                         (f, "optim.lr", 0.001, ft("--lr")), (f, "optim.momentum", 0.9, ft("--momentum")),
                         (f, "optim.weight_decay", 1e-4, ft("--wd")), (f, "optim.epochs", 70, ft("--epoch")),
                         (f, "optim.batch_size", 128, ft("--batch_size")),
                         (f, "optim.schedule", "multistep", f"{SEL_FT_PY} main: MultiStepLR(milestones=args.M, gamma=0.1)"),
                         (f, "optim.milestones", [], ft("--M")),
                         (f, "optim.decay_rate", 0.1, f"{SEL_FT_PY} main: MultiStepLR(milestones=args.M, gamma=0.1)"),
                         (f, "optim.warmup_epochs", 0.0, f"{SEL_FT_PY} main (no warm-up)"),
                         (f, "views.kind", "pad_crop", ft("--DA simple: RandomCrop(32, padding=4)")),
                         (f, "views.pad", 4, ft("--DA simple: RandomCrop(32, padding=4)")),
                         (f, "views.flip", True, ft("--DA simple: RandomHorizontalFlip()")),
                         (f, "augment.mixup", 1.0, ft("--alpha_m")),
                         (f, "augment.label_smoothing", 0.0, f"{NOISY_PLUS} criterionMixBoot (CrossEntropyLoss, no smoothing)"),
                         (f, "model.pretrained", f"runs/noisy/{setting}/{net}_selcl/model.safetensors",
                          f"{SEL_FT_PY} init_model: Sel-CL_model.pth of the Sel-CL run of the same --network"),
                         (f, "model.pretrained_reset_head", True, ft("--ReInitializeClassif 1")),
                         (f, "noisy.selection", f"runs/noisy/{setting}/{net}_selcl",
                          f"{SEL_FT_PY} main: selected_examples_train.npy of the Sel-CL run of the same --network"),
                         (f, "noisy.label_correction_from", 30, ft("--startLabelCorrection")),
                         (f, "noisy.bootstrap", 0.2, f"{NOISY_PLUS} criterionMixBoot (B = 0.2)"),
                         (f, "objective.gt_weight", 1.0,
                          f"{NOISY_PLUS} train_mixup (loss = lossClassif.mean(); with a teacher loss += loss_kd.mean())")]
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
