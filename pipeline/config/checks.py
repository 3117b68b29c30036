"""Value checks of every config schema: each key's range (:data:`RULES`), finiteness, and names.

:func:`validate` runs when a config is loaded (``pipeline.config.schema``, ``pipeline.scenarios.few_shot.config``),
before anything runs, so a bad value is one line naming the key and what it must be.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.objectives import OBJECTIVES, check_param, objective_params
from pipeline.engine.trackers import TRACKERS


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line."""


@dataclass(frozen=True)
class Check:
    """A numeric rule for one key: the value (each element, for a list) lies in ``[lo, hi]``.

    ``lo_open``/``hi_open`` exclude that end. ``pair``: a list of exactly two values, low <= high. ``nonempty``: a list
    with at least one element. ``unless=(key, value)``: skip the rule while that sibling equals value.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    pair: bool = False
    nonempty: bool = False
    unless: tuple[str, Any] | None = None


def _at_least(lo: float) -> Check:
    return Check(lo=lo)


def _above(lo: float) -> Check:
    return Check(lo=lo, lo_open=True)


def _within(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    return Check(lo, hi, lo_open, hi_open)


# Every range rule of both config schemas (``Config`` and ``pipeline.scenarios.few_shot.config.FewShotConfig``), by
# dotted key. On top of these, every float anywhere (lists and model.kwargs included) must be finite.
# Unset (None) values are not checked.
RULES: dict[str, Check] = {
    # data (both schemas)
    "data.subset_seed": _at_least(0), "data.limit": _at_least(0), "data.test_limit": _at_least(0),
    "data.image_size": _at_least(1), "data.classes": _at_least(0), "data.noise_rate": _within(0, 1),
    "data.noise_seed": _at_least(0), "data.val_fraction": _within(0, 1, hi_open=True), "data.val_seed": _at_least(0),
    # views
    "views.num_views": Check(lo=1, unless=("kind", "none")), "views.pad": _at_least(0),
    "views.scale": Check(0, 1, lo_open=True, pair=True), "views.ratio": Check(lo=0, lo_open=True, pair=True),
    "views.crop_pct": _within(0, 1, lo_open=True), "views.seed": _at_least(0),
    # augment
    "augment.num_ops": _at_least(1), "augment.magnitude": _within(0, 10), "augment.magnitude_std": _within(0, 100), "augment.random_erasing": _within(0, 1),
    "augment.mixup": _at_least(0), "augment.cutmix": _at_least(0), "augment.mix_prob": _within(0, 1),
    "augment.switch_prob": _within(0, 1), "augment.label_smoothing": _within(0, 1, hi_open=True),
    # model
    "model.mean": _within(0, 1), "model.std": _above(0), "model.input_size": _at_least(1), "model.bn_batch": _at_least(0),
    # teacher
    "teacher.top_k": _at_least(0), "teacher.batch_size": _at_least(1), "teacher.chunk_samples": _at_least(1),
    # optim
    "optim.lr": _above(0), "optim.momentum": _within(0, 1, hi_open=True), "optim.weight_decay": _at_least(0),
    "optim.epochs": _at_least(1), "optim.warmup_epochs": _at_least(0),
    "optim.warmup_lr": _at_least(0),
    "optim.min_lr": _at_least(0), "optim.milestones": _at_least(0),
    "optim.decay_rate": _within(0, 1, lo_open=True), "optim.layer_decay": _within(0, 1),
    "optim.batch_size": _at_least(1), "optim.batch_per_process": _at_least(0), "optim.eval_batch_size": _at_least(1),
    # run (both schemas)
    "run.seed": _at_least(0), "run.num_threads": _at_least(1), "run.checkpoint_every_steps": _at_least(0),
    # noisy labels: sel_cl (w2s sel-cl) and noisy (Sel-CL+ fine-tuning)
    "sel_cl.low_dim": _at_least(1), "sel_cl.k": _at_least(1), "sel_cl.alpha": _within(0, 1),
    "sel_cl.beta": _within(0, 1), "sel_cl.queue_per_class": _at_least(1), "sel_cl.uns_queue_size": _at_least(1),
    "sel_cl.uns_t": _above(0), "sel_cl.sup_t": _above(0), "sel_cl.ema_momentum": _within(0, 1),
    "sel_cl.mixup_alpha": _above(0), "sel_cl.lambda_c": _at_least(0), "sel_cl.lambda_s": _at_least(0),
    "sel_cl.sim_grad_clip": _above(0), "sel_cl.sup_queue_begin": _at_least(0), "sel_cl.warmup_epochs": _at_least(0),
    "sel_cl.lr_warmup_epochs": _at_least(0), "sel_cl.lr_warmup_multiplier": Check(lo=1),
    "sel_cl.crop_scale": _within(0, 1, lo_open=True), "sel_cl.select_batch_size": _at_least(1),
    "noisy.label_correction_from": _at_least(0), "noisy.bootstrap": _within(0, 1),
    # few-shot: episodes (w2s few-shot eval)
    "episodes.n_way": _at_least(2), "episodes.shots": Check(lo=1, nonempty=True), "episodes.n_query": _at_least(1),
    "episodes.episodes": _at_least(1), "episodes.seed": _at_least(0), "episodes.batch_size": _at_least(1),
    # few-shot: meta (w2s few-shot meta)
    "meta.epochs": _at_least(1), "meta.batches_per_epoch": _at_least(1), "meta.episodes_per_batch": _at_least(1),
    "meta.n_way": _at_least(2), "meta.k_shot": _at_least(1), "meta.n_query": _at_least(1), "meta.lr": _above(0),
    "meta.momentum": _within(0, 1, hi_open=True), "meta.weight_decay": _at_least(0),
    "meta.kd_temperature": _above(0), "meta.threshold": _above(0), "meta.warmup_rate": _within(0, 1),
    "meta.kd_weight": _at_least(0), "meta.gt_weight": _at_least(0), "meta.bn_episodes": _at_least(0),
}


def _check_range(rule: Check, value: float, key: str) -> None:
    bad_lo = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    bad_hi = rule.hi is not None and (value >= rule.hi if rule.hi_open else value > rule.hi)
    if not (bad_lo or bad_hi):
        return
    if rule.lo is not None and rule.hi is not None:
        want = f"in {'(' if rule.lo_open else '['}{rule.lo:g}, {rule.hi:g}{')' if rule.hi_open else ']'}"
    elif rule.lo is not None:
        want = f"{'>' if rule.lo_open else '>='} {rule.lo:g}"
    else:
        assert rule.hi is not None
        want = f"{'<' if rule.hi_open else '<='} {rule.hi:g}"
    raise ConfigError(f"{key} must be {want}, got {value:g}")


def _check_finite(value: Any, key: str) -> None:
    """Every float in ``value`` (nested lists and mappings too) is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}")


def _check_rule(rule: Check, value: Any, key: str, section: Any) -> None:
    if rule.unless is not None and getattr(section, rule.unless[0]) == rule.unless[1]:
        return
    if isinstance(value, list):
        if rule.nonempty and not value:
            raise ConfigError(f"{key} must not be empty")
        if rule.pair and (len(value) != 2 or value[0] > value[1]):
            raise ConfigError(f"{key} must be two numbers [low, high] with low <= high, got {value}")
        for i, v in enumerate(value):
            _check_range(rule, v, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_range(rule, value, key)


def _check_output_outside_store(cfg: Any) -> None:
    """A run directory written into the store it reads would mix run files with the store's."""
    store = getattr(getattr(cfg, "teacher", None), "store", None)
    out = getattr(getattr(cfg, "run", None), "output", None)
    if not store or not out or "://" in str(store):
        return
    s, o = Path(store).resolve(), Path(out).resolve()
    if o == s or s in o.parents:
        raise ConfigError(f"run.output {out} is {'the store' if o == s else 'inside the store'} teacher.store {store}; "
                          "choose a run.output outside it")


def validate(cfg: Any, prefix: str = "") -> Any:
    """Check every value of the dataclass ``cfg`` against :data:`RULES`, the objective section against the
    objectives' own declared ranges (``pipeline.objectives.param``), and finiteness; ConfigError naming the key."""
    if not prefix:
        _check_output_outside_store(cfg)
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, f"{key}.")
            continue
        if value is None:
            continue
        _check_finite(value, key)
        rule = RULES.get(key)
        if rule is not None:
            _check_rule(rule, value, key, cfg)
        if key == "run.log" and any(name not in TRACKERS for name in value):
            raise ConfigError(f"run.log may list {', '.join(TRACKERS)}, got {value}")
        if key == "objective.name" and value not in OBJECTIVES:
            raise ConfigError(f"objective.name must be one of {', '.join(OBJECTIVES)}, got {value!r}")
        if prefix == "objective." and f.name in objective_params():
            problem = check_param(objective_params()[f.name], value)
            if problem:
                raise ConfigError(f"{key} {problem}")
    return cfg
