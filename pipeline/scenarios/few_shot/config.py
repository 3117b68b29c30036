"""The few-shot commands' configuration: :class:`FewShotConfig` and :func:`load_few_shot_config`.

The schema is parsed by the same strict loader as the pipeline's configs
(``pipeline.config.schema.apply_file_and_overrides``): an unknown key is an error listing its section's
valid keys, and each key's range or choices, declared beside it, is checked at load.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine.checkpoint import atomic_write
from pipeline.config.checks import Check, setting
from pipeline.config.schema import ConfigError, DataConfig, RunConfig, apply_file_and_overrides
from pipeline.objectives import OBJECTIVES, WARMUP_STYLES, build_objective

# "none" is plain Meta-Baseline (the registry's vanilla); every registered objective is available
META_OBJECTIVES = ("none", *(name for name in OBJECTIVES if name != "vanilla"))
UNUSED_RUN_KEYS = ("amp", "channels_last", "compile", "compile_backend", "deterministic")
_COUNT, _POSITIVE, _NONNEG = Check(lo=1), Check(lo=0, lo_open=True), Check(lo=0)


@dataclass
class EncoderConfig:
    """The encoder to evaluate or fine-tune: a ``w2s train-teacher`` / ``train-student`` / ``few-shot meta``
    run directory (or its model.safetensors)."""

    checkpoint: str | None = None


@dataclass
class FewShotTeacherConfig:
    """The weak teacher of the meta stage: a classifier-stage run directory (or its model.safetensors)."""

    checkpoint: str | None = None


@dataclass
class EpisodesConfig:
    """Evaluation episodes: ``episodes`` seeded ``n_way``-way episodes per shot count in ``shots``.

    ``batch_size`` is the number of images embedded at once.
    """

    n_way: int = setting(5, check=Check(lo=2))
    shots: list[int] = setting(factory=lambda: [1, 5], check=Check(lo=1, nonempty=True))
    n_query: int = setting(15, check=_COUNT)
    episodes: int = setting(2000, check=_COUNT)
    seed: int = setting(0, check=_NONNEG)
    batch_size: int = setting(256, check=_COUNT)


@dataclass
class MetaConfig:
    """Meta-Baseline training: ``epochs`` x ``batches_per_epoch`` SGD steps of ``episodes_per_batch`` episodes.

    ``objective``: none (plain Meta-Baseline, query CE only) or any registered objective (the arguments of
    ``pipeline.objectives.build_objective``; ``warmup_rate``/``warmup_style`` are AdaptConf's beta warm-up;
    ``params`` passes any other parameter of the registry by name, checked as the ``objective`` section is).
    ``bn_episodes`` (0 = off: BN over the whole batch): the student encoder's training-mode BatchNorm
    statistics are computed over consecutive groups of this many episodes (ghost batches,
    ``pipeline.models.ghost_bn``), as ``nn.DataParallel`` splits a batch's episodes over GPUs
    (the paper: 4 episodes on 2 GPUs, so 2).
    """

    epochs: int = setting(20, check=_COUNT)
    batches_per_epoch: int = setting(200, check=_COUNT)
    episodes_per_batch: int = setting(4, check=_COUNT)
    n_way: int = setting(5, check=Check(lo=2))
    k_shot: int = setting(1, check=_COUNT)
    n_query: int = setting(15, check=_COUNT)
    lr: float = setting(1e-3, check=_POSITIVE)
    momentum: float = setting(0.9, check=Check(0, 1, hi_open=True))
    weight_decay: float = setting(5e-4, check=_NONNEG)
    objective: str = setting("none", choices=META_OBJECTIVES)
    kd_temperature: float = setting(10.0, check=_POSITIVE)
    threshold: float = setting(0.25, check=_POSITIVE)
    warmup_rate: float = setting(0.25, check=Check(0, 1))
    warmup_style: str = setting("few_shot", choices=WARMUP_STYLES)
    kd_weight: float = setting(1.0, check=_NONNEG)
    gt_weight: float = setting(1.0, check=_NONNEG)
    bn_episodes: int = setting(0, check=_NONNEG)
    params: dict[str, Any] = setting(factory=dict)  # any other parameter of the objective, e.g. {dkd_beta: 2.0}


@dataclass
class FewShotConfig:
    """A few-shot command's config. ``eval`` reads data (test split), encoder, episodes and run;
    ``meta`` reads data (train split), encoder, teacher, meta and run."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    teacher: FewShotTeacherConfig = field(default_factory=FewShotTeacherConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output="runs/few_shot/default"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_few_shot_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FewShotConfig:
    """Defaults, then the YAML file, then each ``key=value`` override in order (strict, like ``load_config``)."""
    cfg = apply_file_and_overrides(FewShotConfig(), path, overrides)
    if cfg.data.noise_mode != "none":
        raise ConfigError("data.noise_mode: the few-shot commands do not inject label noise; leave it at none")
    default = RunConfig()
    for key in UNUSED_RUN_KEYS:  # the shared run section: refuse what these commands would silently ignore
        if getattr(cfg.run, key) != getattr(default, key):
            raise ConfigError(f"run.{key}: the few-shot commands do not use it; leave it at {getattr(default, key)!r}")
    _check_objective_params(cfg.meta)
    return cfg


def _check_objective_params(m: MetaConfig) -> None:
    """``meta.params`` names registered objective parameters the meta section has no key of its own for."""
    own = {f.name for f in dataclasses.fields(MetaConfig)}
    for key in m.params:
        if key in own:
            raise ConfigError(f"meta.params.{key}: the meta section has its own key; set meta.{key} instead")
    try:
        build_objective("vanilla" if m.objective == "none" else m.objective, **m.params)
    except ValueError as exc:
        raise ConfigError(f"meta.params: {exc}") from None


def _save_config(cfg: FewShotConfig, out: Path) -> None:
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(text))
