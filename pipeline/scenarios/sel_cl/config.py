"""The config sections of the noisy-label stages: ``sel_cl`` (pre-training) and ``noisy`` (fine-tuning).

Both are config sections this scenario adds to the core's (``pipeline/scenarios/sel_cl/plugin.py``);
each key's range is declared beside it. ``w2s sel-cl`` reads ``data``
(with label noise), ``model``, ``optim`` (epochs, lr, milestones, weight decay, batch size,
momentum) and ``sel_cl``; the fine-tuning stage is ``w2s train-teacher`` / ``train-student`` with a
``noisy`` section. Defaults are the upstream ones (``pipeline/scenarios/sel_cl/defaults.py`` names the file and
argument of each).
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.checks import Check, setting

_COUNT, _SHARE, _POSITIVE, _NONNEG = Check(lo=1), Check(0, 1), Check(lo=0, lo_open=True), Check(lo=0)


@dataclass
class SelCLConfig:
    """Sel-CL pre-training: contrastive warm-up, kNN selection of confident examples and pairs, SupCon."""

    low_dim: int = setting(128, check=_COUNT)
    k: int = setting(250, check=_COUNT)
    alpha: float = setting(0.5, check=_SHARE)
    beta: float = setting(0.25, check=_SHARE)
    queue_per_class: int = setting(1000, check=_COUNT)
    uns_queue_size: int = setting(10000, check=_COUNT)
    uns_t: float = setting(0.1, check=_POSITIVE)
    sup_t: float = setting(0.1, check=_POSITIVE)
    ema_momentum: float = setting(0.999, check=_SHARE)
    mixup_alpha: float = setting(1.0, check=_POSITIVE)
    lambda_c: float = setting(1.0, check=_NONNEG)
    lambda_s: float = setting(0.01, check=_NONNEG)
    sim_grad_clip: float = setting(0.25, check=_POSITIVE)
    sup_queue_begin: int = setting(3, check=_NONNEG)
    warmup_epochs: int = setting(1, check=_NONNEG)
    lr_warmup_epochs: int = setting(5, check=_NONNEG)
    lr_warmup_multiplier: float = setting(100.0, check=Check(lo=1))
    exclude_self: bool = True
    crop_scale: float = setting(0.08, check=Check(0, 1, lo_open=True))
    select_batch_size: int = setting(100, check=_COUNT)


@dataclass
class NoisyConfig:
    """Sel-CL+ fine-tuning on a Sel-CL run's confident examples, with label correction from an epoch on.

    ``selection``: a ``w2s sel-cl`` run directory; training keeps only the examples it selected at
    its end. ``label_correction_from`` (0-based epoch, unset = off; upstream 30, i.e. its epochs > 30)
    bootstraps the target: ``(1 - bootstrap) onehot(y) + bootstrap onehot(argmax f(x_clean))``, with
    ``f(x_clean)`` the model (in training mode, as upstream) on the un-augmented image.
    """

    selection: str | None = None
    label_correction_from: int | None = setting(None, check=_NONNEG)
    bootstrap: float = setting(0.2, check=_SHARE)
