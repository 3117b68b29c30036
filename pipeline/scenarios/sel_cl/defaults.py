"""Upstream defaults of Sel-CL pre-training and Sel-CL+ fine-tuning, each with where it comes from.

Sources (``W2S`` = ggjy/vision_weak_to_strong noisy_labels_learning/, ``SCL`` = ShikunLi/Sel-CL):
argparse defaults of W2S CIFAR/train_Sel-CL.py and CIFAR/train_Sel-CL_fine-tuning.py, the values the
run scripts pass (W2S CIFAR/RunScripts_*.sh; SCL CIFAR/RunScripts_*.sh spell every argument out),
and constants in the code (W2S utils_sel/utils_noise.py, utils_plus.py; SCL utils/*.py).
Epochs in comments are upstream's 1-based ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PRETRAIN = "ggjy/vision_weak_to_strong noisy_labels_learning/CIFAR/train_Sel-CL.py"
FINETUNE = "ggjy/vision_weak_to_strong noisy_labels_learning/CIFAR/train_Sel-CL_fine-tuning.py"


@dataclass(frozen=True)
class SelCLDefaults:
    """Sel-CL pre-training (stage 1)."""

    epochs: int = 250                   # PRETRAIN --epoch
    batch_size: int = 128               # PRETRAIN --batch_size
    lr: float = 0.1                     # PRETRAIN --lr
    momentum: float = 0.9               # PRETRAIN --momentum (SGD)
    weight_decay: float = 1e-4          # PRETRAIN --wd
    lr_scheduler: str = "step"          # PRETRAIN --lr-scheduler (stepped every iteration; SCL utils/lr_scheduler.py)
    lr_decay_epochs: tuple[int, ...] = (125, 200)  # PRETRAIN --lr-decay-epochs
    lr_decay_rate: float = 0.1          # PRETRAIN --lr-decay-rate
    lr_warmup_epochs: int = 5           # PRETRAIN --lr-warmup-epoch (linear, per iteration, from lr / 100)
    lr_warmup_multiplier: int = 100     # PRETRAIN --lr-warmup-multiplier
    warmup_epochs: int = 1              # PRETRAIN --warmup-epoch (unsupervised InfoNCE only)
    warmup_way: str = "uns"             # PRETRAIN --warmup_way
    augment: str = "complex"            # PRETRAIN --DA (RandomResizedCrop, flip, colour jitter, grey; two crops)
    network: str = "PR18"               # PRETRAIN --network (PreAct-ResNet18)
    head: str = "Linear"                # PRETRAIN --headType (512 -> low_dim, L2-normalized)
    low_dim: int = 128                  # PRETRAIN --low_dim
    alpha_m: float = 1.0                # PRETRAIN --alpha_m (mixup Beta parameter)
    ema_momentum: float = 0.999         # PRETRAIN --alpha_moving (key encoder EMA)
    uns_queue_size: int = 10000         # PRETRAIN --uns_queue_k (MoCo memory)
    uns_t: float = 0.1                  # PRETRAIN --uns_t
    sup_t: float = 0.1                  # PRETRAIN --sup_t
    sup_queue_use: bool = True          # PRETRAIN --sup_queue_use 1
    sup_queue_begin: int = 3            # PRETRAIN --sup_queue_begin (queue terms from epoch 4)
    queue_per_class: int = 1000         # PRETRAIN --queue_per_class (CIFAR-100 scripts: 100); size = x * C * 2
    aprox: int = 1                      # PRETRAIN --aprox (log-sum-exp form; 1 = plain)
    lambda_s: float = 0.01              # PRETRAIN --lambda_s (similarity loss)
    lambda_c: float = 1.0               # PRETRAIN --lambda_c (classification loss)
    sim_grad_clip: float = 0.25         # W2S utils_sel/utils_noise.py train_sel clip_grad_norm_(max_norm=0.25)
    k_val: int = 250                    # PRETRAIN --k_val (kNN neighbours)
    alpha: float = 0.5                  # PRETRAIN --alpha (example selection quantile)
    beta: float = 0.25                  # PRETRAIN --beta (pair similarity quantile)
    conf_clamp: float = 0.01            # W2S utils_sel/utils_noise.py pair_selection prob_temp clamp to [1e-2, 1 - 1e-2]
    select_batch_size: int = 100        # W2S utils_sel/utils_noise.py pair_selection temploader batch_size (test transform)
    save_every: int = 10                # PRETRAIN main: model + selected_examples_train.npy every 10 epochs


@dataclass(frozen=True)
class SelCLPlusDefaults:
    """Sel-CL+ fine-tuning (stage 2) on the selected examples, and the paper's AdaptConf KD term."""

    epochs: int = 70                    # FINETUNE --epoch (SCL parse default 200; SCL run scripts pass 70)
    batch_size: int = 128               # FINETUNE --batch_size
    lr: float = 0.001                   # FINETUNE --lr (SCL parse default 0.1; SCL run scripts pass 0.001)
    momentum: float = 0.9               # FINETUNE --momentum
    weight_decay: float = 1e-4          # FINETUNE --wd
    milestones: tuple[int, ...] = ()    # FINETUNE --M (empty: constant lr, no run script passes one)
    augment: str = "simple"             # FINETUNE --DA (crop 32 pad 4 + flip; plus an un-augmented view)
    alpha_m: float = 1.0                # FINETUNE --alpha_m
    start_label_correction: int = 30    # FINETUNE --startLabelCorrection (correction for epoch > 30)
    bootstrap: float = 0.2              # W2S utils_sel/utils_plus.py criterionMixBoot B = 0.2
    reinit_classifier: bool = True      # FINETUNE --ReInitializeClassif 1 (linear2 = Linear(512, C))
    low_dim: int = 128                  # FINETUNE --low_dim
    head: str = "Linear"                # FINETUNE --headType
    student_network: str = "PR34"       # W2S CIFAR/RunScripts_*_Sel-CL_plus-KD.sh --network
    teacher_network: str = "PR18"       # W2S CIFAR/RunScripts_*_Sel-CL_plus-KD.sh --teacher_network (its Sel-CL model)
    kd_threshold: float = 0.5           # W2S kd_config/*.yaml superalignment_threshold
    kd_weight: float = 1.0              # W2S kd_config/*.yaml loss_weight
    kd_warmup_rate: float = 0.25        # W2S utils_sel/kd_loss.py adapt_conf_loss int(total_epochs * 0.25)
    kd_max_epoch_offset: int = 1        # FINETUNE passes max_epoch = args.epoch + 1


@dataclass(frozen=True)
class RunSetting:
    """One run script line: selection thresholds, queue size and (for Sel-CL+ KD) the KD temperature."""

    alpha: float
    beta: float
    queue_per_class: int
    kd_temperature: float | None
    source: str = field(default="", compare=False)


# (dataset, noise type, noise ratio) -> values the run scripts use.
RUN_SETTINGS: dict[tuple[str, str, float], RunSetting] = {
    ("cifar10", "symmetric", 0.2): RunSetting(
        0.5, 0.25, 1000, 20.0,
        "W2S CIFAR/RunScripts_cifar10_Sel-CL.sh (argparse defaults; SCL script passes --alpha 0.5 --beta 0.25 "
        "--queue_per_class 1000); RunScripts_cifar10_Sel-CL_plus-KD.sh kd_config/adapt_conf_kd_kw1_kt20_th05.yaml"),
    ("cifar10", "asymmetric", 0.4): RunSetting(
        0.5, 0.25, 1000, 10.0,
        "W2S CIFAR/RunScripts_cifar10_Sel-CL.sh (argparse defaults); "
        "RunScripts_cifar10_Sel-CL_plus-KD.sh kd_config/adapt_conf_kd_kw1_kt10_th05.yaml"),
    ("cifar100", "symmetric", 0.2): RunSetting(
        0.75, 0.35, 100, 1.0,
        "W2S CIFAR/RunScripts_cifar100_Sel-CL.sh --alpha 0.75 --beta 0.35 --queue_per_class 100; "
        "RunScripts_cifar100_Sel-CL_plus-KD.sh kd_config/adapt_conf_kd_kw1_kt1_th05.yaml"),
    ("cifar100", "asymmetric", 0.4): RunSetting(
        0.25, 0.0, 100, None,
        "W2S CIFAR/RunScripts_cifar100_Sel-CL.sh --alpha 0.25 --beta 0.0 --queue_per_class 100; the KD script's "
        "second line runs --dataset CIFAR-10 (kt10), so no CIFAR-100 asym KD temperature is given"),
}
