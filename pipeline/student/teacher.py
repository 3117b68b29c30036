"""The teacher as stage 2 sees it: a complete store of its logits, its model (online), or both.

:func:`open_teacher` loads what the objective needs and checks a store against the run (dataset,
view policy, teacher weights), so a student never replays logits of other images or views.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.config.schema import Config
from pipeline.objectives import Objective
from pipeline.models.pretrained import load_teacher
from pipeline.engine.runtime import RunError
from pipeline.data.sources.base import Source
from pipeline.student.specs import dataset_record, fed_teacher_meta, teacher_spec, view_policy
from pipeline.data.views import ViewPolicy
from store.backends import open_store
from store.chunks import StoreError
from store.protocol import Store



@dataclass
class Teacher:
    """A complete store, a model, or both (store + agreement)."""

    mode: str
    store: Store | None = None
    model: nn.Module | None = None
    meta: dict[str, Any] | None = None
    sha256: str | None = None


def open_teacher(cfg: Config, objective: Objective, train_src: Source,
                 device: torch.device) -> tuple[Teacher | None, ViewPolicy]:
    """Load what the objective needs and the run's view policy; check that a store matches both.

    ``train_src`` is the training selection a store covers (before any validation hold-out). A run
    that replays a store takes the store's view seed unless ``views.seed`` pins one. The teacher's
    ``meta`` describes the input it is fed (``teacher.input``), and a store must come from that input.
    """
    if not objective.needs_teacher:
        return None, view_policy(cfg)
    mode = cfg.teacher.mode
    t = Teacher(mode)
    if cfg.teacher.checkpoint:
        model, t.meta, t.sha256 = load_teacher(cfg.teacher.checkpoint, cfg.teacher.model, train_src.num_classes,
                                               train_src.channels)
        t.model, t.meta = model.to(device), fed_teacher_meta(cfg, train_src, t.meta)
    elif mode == "online":
        raise RunError("teacher.mode is online but teacher.checkpoint is not set")
    if mode == "store":
        if not cfg.teacher.store:
            raise RunError("teacher.store is not set; run `w2s infer-teacher` and point teacher.store at its output")
        t.store = open_store(cfg.teacher.store)
        policy = view_policy(cfg, seed=t.store.attrs.get("view_policy", {}).get("seed"))
        expected: dict[str, Any] = {"dataset": dataset_record(train_src), "view_policy": policy.describe()}
        if t.meta is not None:
            spec = teacher_spec(train_src, t.meta)
            expected["teacher"] = {"sha256": t.sha256, "mean": list(spec.mean), "std": list(spec.std),
                                   "input_size": spec.size[0]}
        t.store.check_matches(expected)
        if t.store.num_classes != train_src.num_classes:
            raise StoreError(f"store has {t.store.num_classes} classes but {train_src.name} has {train_src.num_classes}")
        return t, policy
    return t, view_policy(cfg)
