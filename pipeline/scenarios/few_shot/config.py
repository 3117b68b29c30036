"""The few-shot commands' configuration: :class:`FewShotConfig`, :func:`load_few_shot_config` and the
range checks each command runs when it starts (:func:`_check_episodes` for ``eval``, :func:`_check_meta`
for ``meta``).

The schema is parsed by the same strict loader as the pipeline's configs
(``pipeline.config.schema.apply_file_and_overrides``): an unknown key is an error listing its section's valid keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine.checkpoint import atomic_write
from pipeline.config.schema import ConfigError, DataConfig, apply_file_and_overrides
from pipeline.objectives import WARMUP_STYLES

META_OBJECTIVES = ("none", "kd", "adaptconf")


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

    n_way: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    n_query: int = 15
    episodes: int = 2000
    seed: int = 0
    batch_size: int = 256


@dataclass
class MetaConfig:
    """Meta-Baseline training: ``epochs`` x ``batches_per_epoch`` SGD steps of ``episodes_per_batch`` episodes.

    ``objective``: none (plain Meta-Baseline, query CE only), kd or adaptconf (the arguments of
    ``pipeline.objectives.build_objective``; ``warmup_rate``/``warmup_style`` are AdaptConf's beta warm-up).
    ``bn_episodes`` (0 = off: BN over the whole batch): the student encoder's training-mode BatchNorm
    statistics are computed over consecutive groups of this many episodes (ghost batches,
    ``pipeline.scenarios.few_shot.ghost_bn``), as ``nn.DataParallel`` splits a batch's episodes over GPUs
    (the paper: 4 episodes on 2 GPUs, so 2).
    """

    epochs: int = 20
    batches_per_epoch: int = 200
    episodes_per_batch: int = 4
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    objective: str = "none"
    kd_temperature: float = 10.0
    threshold: float = 0.25
    warmup_rate: float = 0.25
    warmup_style: str = "few_shot"
    kd_weight: float = 1.0
    gt_weight: float = 1.0
    bn_episodes: int = 0


@dataclass
class FewShotRunConfig:
    """Where results go and how the process runs."""

    output: str = "runs/few_shot/default"
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 2
    checkpoint_every_steps: int = 0
    log: list[str] = field(default_factory=list)


@dataclass
class FewShotConfig:
    """A few-shot command's config. ``eval`` reads data (test split), encoder, episodes and run;
    ``meta`` reads data (train split), encoder, teacher, meta and run."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    teacher: FewShotTeacherConfig = field(default_factory=FewShotTeacherConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    run: FewShotRunConfig = field(default_factory=FewShotRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_few_shot_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FewShotConfig:
    """Defaults, then the YAML file, then each ``key=value`` override in order (strict, like ``load_config``)."""
    cfg = apply_file_and_overrides(FewShotConfig(), path, overrides)
    if cfg.data.noise_mode != "none":
        raise ConfigError("data.noise_mode: the few-shot commands do not inject label noise; leave it at none")
    return cfg


def _positive(section: str, **values: int | float) -> None:
    """ConfigError naming the first of ``values`` that is not > 0."""
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{section}.{key} must be > 0, got {value}")


def _check_episodes(e: EpisodesConfig) -> None:
    _positive("episodes", n_way=e.n_way, n_query=e.n_query, episodes=e.episodes, batch_size=e.batch_size)
    if not e.shots or any(k < 1 for k in e.shots):
        raise ConfigError(f"episodes.shots must be a non-empty list of shot counts >= 1, got {e.shots}")


def _check_meta(m: MetaConfig) -> None:
    if m.objective not in META_OBJECTIVES:
        raise ConfigError(f"meta.objective must be one of {', '.join(META_OBJECTIVES)}, got {m.objective!r}")
    if m.warmup_style not in WARMUP_STYLES:
        raise ConfigError(f"meta.warmup_style must be one of {', '.join(WARMUP_STYLES)}, got {m.warmup_style!r}")
    _positive("meta", epochs=m.epochs, batches_per_epoch=m.batches_per_epoch, episodes_per_batch=m.episodes_per_batch,
              k_shot=m.k_shot, n_query=m.n_query, lr=m.lr)
    if m.n_way < 2:
        raise ConfigError(f"meta.n_way must be >= 2, got {m.n_way}")


def _save_config(cfg: FewShotConfig, out: Path) -> None:
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(text))
