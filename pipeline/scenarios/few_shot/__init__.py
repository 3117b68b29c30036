"""The few-shot scenario: episodic evaluation of an encoder and Meta-Baseline fine-tuning with a weak teacher.

The scenario has three steps (docs/scenarios/few_shot.md):

1. **classifier stage**: the ordinary ``w2s train-teacher`` / ``infer-teacher`` / ``train-student``
   on the base classes (``data.classes``, or miniImageNet's ``train_phase_train``);
2. **meta stage** (:func:`meta_train`, ``w2s few-shot meta``): Meta-Baseline. The classifier
   stage's encoder is fine-tuned on N-way K-shot episodes of the base classes with a cosine
   classifier over class prototypes and a learnable scale; a weak teacher encoder scores the same
   episodes with its own prototypes, and the student's episode logits learn from the teacher's
   through KD or AdaptConf (``pipeline.objectives``), the ground-truth query labels through CE;
3. **evaluation** (:func:`evaluate`, ``w2s few-shot eval``): cosine nearest-centroid accuracy over
   seeded episodes of the novel classes, mean and 95% confidence half-width per shot count.

Images reach the models as the fixed view 0 (whole image, resized to the model's input size,
normalized with the model's own mean/std from its model.json), replayed by the same DALI code as
the two pipeline stages. Few-shot commands run in one process (no torchrun).

The commands read their own YAML schema, :class:`FewShotConfig`, parsed by the same strict loader
as the pipeline's configs: an unknown key is an error listing its section's valid keys.

Modules: ``config`` (:class:`FewShotConfig`, :func:`load_few_shot_config`), ``episodes`` (episode
sampling, prototypes, cosine logits, 95% CIs, :func:`evaluate_episodes`), ``data`` (what both commands
share: split, encoder loading, fixed-view embedding), ``evaluation`` (step 3), ``meta`` (step 2) and
``ghost_bn`` (:func:`ghost_batch_norm`: the paper's per-GPU DataParallel BatchNorm batch on one device, for
``model.bn_batch`` of the classifier stage and ``meta.bn_episodes``).
The names below are the package's public surface.
"""
from __future__ import annotations

from pipeline.scenarios.few_shot.config import FewShotConfig, load_few_shot_config
from pipeline.scenarios.few_shot.episodes import (cosine_logits, episode_sampler, evaluate_episodes, mean_confidence_interval,
                                        prototypes, sample_episode)
from pipeline.scenarios.few_shot.evaluation import evaluate
from pipeline.models.ghost_bn import ghost_batch_norm
from pipeline.scenarios.few_shot.meta import EpisodeLayout, MetaTrainer, epoch_batches, meta_train

__all__ = [
    "FewShotConfig", "load_few_shot_config",
    "cosine_logits", "episode_sampler", "evaluate_episodes", "mean_confidence_interval", "prototypes", "sample_episode",
    "evaluate", "ghost_batch_norm",
    "EpisodeLayout", "MetaTrainer", "epoch_batches", "meta_train",
]
