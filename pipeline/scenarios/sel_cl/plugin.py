"""The noisy-label scenario as a plug-in of the core (``pipeline/scenario.py``).

It adds the ``sel_cl`` and ``noisy`` config sections, keeps a Sel-CL run's selected examples as the
training rows of stage 1 and stage 2 (``noisy.selection``), and replaces the student's target with
Sel-CL+'s bootstrapped label correction from ``noisy.label_correction_from`` on.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config.checks import ConfigError
from pipeline.data.sources.base import Source
from pipeline.data.views import sample_params
from pipeline.scenario import Scenario, register_scenario
from pipeline.scenarios.sel_cl.config import NoisyConfig, SelCLConfig
from pipeline.scenarios.sel_cl.selected import keep_selected
from pipeline.student.accuracy import fixed_view_replayer


class LabelCorrection:
    """Sel-CL+'s bootstrapped target ``(1 - B) onehot(y) + B onehot(argmax f(x_clean))``, mixed as the images.

    ``f`` runs in training mode on the un-augmented view (the fixed view 0), without gradient, as
    upstream does, so its batch-norm statistics move too.
    """

    def __init__(self, student: Any, start: int, bootstrap: float) -> None:
        cfg = student.cfg
        self.student, self.start, self.bootstrap = student, start, bootstrap
        self.replayer = fixed_view_replayer(student.train_src, student.student_spec, student.local_batch,
                                            student.policy, cfg.run.device, cfg.run.num_threads)

    def __call__(self, batch: Any, epoch: int, lam: float, target: Tensor) -> Tensor:
        if epoch < self.start:
            return target
        s = self.student
        src, idx = s.train_src, batch.indices
        sizes = src.sizes_of(idx)
        x = self.replayer(src.read(idx), sample_params(s.policy, idx, 0, sizes), sizes if src.encoded else None)[0]
        with torch.no_grad(), s.autocast():
            pred = s.net(x.contiguous(memory_format=s.memory_format)).argmax(1)
        c = src.num_classes
        y = (1 - self.bootstrap) * F.one_hot(batch.labels.long(), c).float() + self.bootstrap * F.one_hot(pred, c).float()
        return y * lam + y.flip(0) * (1 - lam)


@register_scenario
class NoisyLabels(Scenario):
    """Sel-CL pre-training (``w2s sel-cl``) and Sel-CL+ fine-tuning (``train-teacher`` / ``train-student``)."""

    name = "noisy_labels"
    sections = {"sel_cl": SelCLConfig, "noisy": NoisyConfig}

    def check(self, cfg: Any) -> None:
        if cfg.noisy.selection and cfg.data.val_fraction > 0:
            raise ConfigError("noisy.selection keeps a Sel-CL run's examples; set data.val_fraction to 0")

    def training_rows(self, cfg: Any, source: Source) -> Source | None:
        return keep_selected(source, cfg.noisy.selection) if cfg.noisy.selection else None

    def target_hook(self, cfg: Any, student: Any) -> LabelCorrection | None:
        start = cfg.noisy.label_correction_from
        return None if start is None else LabelCorrection(student, start, cfg.noisy.bootstrap)
