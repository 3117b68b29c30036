"""The config sections of the noisy-label stages: ``sel_cl`` (pre-training) and ``noisy`` (fine-tuning).

Both are sections of the pipeline's :class:`pipeline.config.schema.Config`; ``w2s sel-cl`` reads ``data``
(with label noise), ``model``, ``optim`` (epochs, lr, milestones, weight decay, batch size,
momentum) and ``sel_cl``; the fine-tuning stage is ``w2s train-teacher`` / ``train-student`` with a
``noisy`` section. Defaults are the upstream ones (``pipeline/scenarios/sel_cl/defaults.py`` names the file and
argument of each).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SelCLConfig:
    """Sel-CL pre-training: contrastive warm-up, kNN selection of confident examples and pairs, SupCon."""

    low_dim: int = 128
    k: int = 250
    alpha: float = 0.5
    beta: float = 0.25
    queue_per_class: int = 1000
    uns_queue_size: int = 10000
    uns_t: float = 0.1
    sup_t: float = 0.1
    ema_momentum: float = 0.999
    mixup_alpha: float = 1.0
    lambda_c: float = 1.0
    lambda_s: float = 0.01
    sim_grad_clip: float = 0.25
    sup_queue_begin: int = 3
    warmup_epochs: int = 1
    lr_warmup_epochs: int = 5
    lr_warmup_multiplier: float = 100.0
    exclude_self: bool = True
    crop_scale: float = 0.08
    select_batch_size: int = 100


@dataclass
class NoisyConfig:
    """Sel-CL+ fine-tuning on a Sel-CL run's confident examples, with label correction from an epoch on.

    ``selection``: a ``w2s sel-cl`` run directory; training keeps only the examples it selected at
    its end. ``label_correction_from`` (0-based epoch, unset = off; upstream 30, i.e. its epochs > 30)
    bootstraps the target: ``(1 - bootstrap) onehot(y) + bootstrap onehot(argmax f(x_clean))``, with
    ``f(x_clean)`` the model (in training mode, as upstream) on the un-augmented image.
    """

    selection: str | None = None
    label_correction_from: int | None = None
    bootstrap: float = 0.2
