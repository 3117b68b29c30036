"""Sel-CL (Li et al., CVPR 2022) and its Sel-CL+ fine-tuning, as the paper's noisy-label code runs them.

The algorithmic core only, as pure torch functions the training loop wires together: the key
encoder's EMA and the two memories (:mod:`.queue`), kNN example and pair selection
(:mod:`.selection`), the loss terms (:mod:`.losses`) and upstream's defaults (:mod:`.defaults`).
Upstream: ggjy/vision_weak_to_strong noisy_labels_learning/ (a copy of ShikunLi/Sel-CL plus AdaptConf KD).
"""
from pipeline.scenarios.sel_cl.defaults import RUN_SETTINGS, RunSetting, SelCLDefaults, SelCLPlusDefaults
from pipeline.scenarios.sel_cl.losses import (
    ContrastMasks,
    QueueBatch,
    ViewMix,
    adaptconf_kd,
    batch_masks,
    corrected_targets,
    label_correction_active,
    memory_masks,
    mix_inputs,
    mixup_ce,
    sel_cl_backward,
    sel_cl_losses,
    sel_cl_plus_ce,
    sel_cl_plus_losses,
    similarity_loss,
    sup_contrastive_loss,
    unsup_contrastive_loss,
    unsup_keep,
    use_sup_queue,
    warmup_losses,
)
from pipeline.scenarios.sel_cl.queue import KeyMemory, SupQueue, momentum_update
from pipeline.scenarios.sel_cl.selection import (
    ExampleSelection,
    PairSelection,
    all_pairs,
    class_quota,
    knn_neighbours,
    knn_soft_labels,
    linear_quantile,
    neighbour_vote,
    pair_threshold,
    select_confident,
    select_examples,
    select_pairs,
    selection_precision_recall,
)

__all__ = [
    "RUN_SETTINGS", "RunSetting", "SelCLDefaults", "SelCLPlusDefaults",
    "ContrastMasks", "QueueBatch", "ViewMix", "adaptconf_kd", "batch_masks", "corrected_targets",
    "label_correction_active", "memory_masks", "mix_inputs", "mixup_ce", "sel_cl_backward", "sel_cl_losses",
    "sel_cl_plus_ce", "sel_cl_plus_losses", "similarity_loss", "sup_contrastive_loss", "unsup_contrastive_loss",
    "unsup_keep", "use_sup_queue", "warmup_losses",
    "KeyMemory", "SupQueue", "momentum_update",
    "ExampleSelection", "PairSelection", "all_pairs", "class_quota", "knn_neighbours", "knn_soft_labels",
    "linear_quantile", "neighbour_vote", "pair_threshold", "select_confident", "select_examples", "select_pairs",
    "selection_precision_recall",
]
