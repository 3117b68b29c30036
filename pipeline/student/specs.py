"""Small translations from a config to the objects both stages share (view policy, input specs, records)."""
from __future__ import annotations

from typing import Any

from pipeline.config.schema import Config
from pipeline.data.mixing import MixConfig
from pipeline.data.sources.base import Source
from pipeline.data.timm_augment import StudentAugment
from pipeline.data.views import InputSpec, ViewPolicy




def view_policy(cfg: Config, seed: int | None = None) -> ViewPolicy:
    """The configured policy; its seed is ``views.seed``, else ``seed`` (a store's), else ``run.seed``."""
    v = cfg.views
    resolved = v.seed if v.seed is not None else (seed if seed is not None else cfg.run.seed)
    return ViewPolicy(v.kind, v.num_views, v.pad, v.flip, tuple(v.scale), tuple(v.ratio), v.crop_pct, resolved,
                      v.interpolation, v.eval_interpolation)


def fresh_views(cfg: Config, reads_store: bool) -> bool:
    """Whether epochs draw new view params (``views.sampling``; ``auto``: unless a store is replayed)."""
    mode = cfg.views.sampling
    return not reads_store if mode == "auto" else mode == "fresh"


def student_augment(cfg: Config) -> StudentAugment:
    a = cfg.augment
    return StudentAugment(a.policy, a.num_ops, a.magnitude, a.magnitude_std, a.increasing)


def mix_config(cfg: Config) -> MixConfig:
    a = cfg.augment
    return MixConfig(a.mixup, a.cutmix, a.mix_prob, a.switch_prob, a.label_smoothing)


def dataset_record(source: Source) -> dict[str, Any]:
    """What a store records about the data it was computed on (compared by train-student)."""
    record: dict[str, Any] = {"source": source.name, "split": source.split, "num_samples": len(source),
                              "fingerprint": source.fingerprint()}
    if getattr(source, "noise_rate", None) is not None:
        record["realized_noise_rate"] = source.noise_rate
    return record


def input_spec(source: Source, mean: Any, std: Any, size: Any) -> InputSpec:
    """A model's input: its own size and normalization where given, else the dataset's."""
    hw = (int(size), int(size)) if size else tuple(source.image_hw)
    return InputSpec(hw, tuple(mean or source.mean), tuple(std or source.std))  # type: ignore[arg-type]


def teacher_spec(source: Source, meta: dict[str, Any]) -> InputSpec:
    """The teacher's own normalization and input size, as recorded in its model.json."""
    return input_spec(source, meta.get("mean"), meta.get("std"), meta.get("input_size"))


def student_spec(cfg: Config, source: Source) -> InputSpec:
    """The student's input: ``model.mean`` / ``std`` / ``input_size`` where set, else the dataset's."""
    return input_spec(source, cfg.model.mean, cfg.model.std, cfg.model.input_size)


def fed_teacher_meta(cfg: Config, source: Source, meta: dict[str, Any]) -> dict[str, Any]:
    """The teacher's description with the input it is fed (``teacher.input``), for :func:`teacher_spec`.

    ``own`` keeps its recorded normalization and size; ``student`` puts the student's there: the
    paper's train.py resolves one data config from the student model and feeds that batch to both.
    """
    if cfg.teacher.input == "own":
        return meta
    spec = student_spec(cfg, source)
    return {**meta, "mean": list(spec.mean), "std": list(spec.std), "input_size": spec.size[0]}
