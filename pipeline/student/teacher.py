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
from store.ensemble import TeacherEnsemble
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
        paths = _store_paths(cfg)
        stores = [open_store(p) for p in paths]
        policy = view_policy(cfg, seed=stores[0].attrs.get("view_policy", {}).get("seed"))
        expected: dict[str, Any] = {"dataset": dataset_record(train_src), "view_policy": policy.describe()}
        if t.meta is not None:
            spec = teacher_spec(train_src, t.meta)
            expected["teacher"] = {"sha256": t.sha256, "mean": list(spec.mean), "std": list(spec.std),
                                   "input_size": spec.size[0]}
        for store in stores:
            store.check_matches(expected)
            if store.num_classes != train_src.num_classes:
                raise StoreError(f"store {store.path} has {store.num_classes} classes but {train_src.name} has "
                                 f"{train_src.num_classes}")
        t.store = stores[0] if len(stores) == 1 else TeacherEnsemble(stores, cfg.teacher.combine, cfg.teacher.weights)
        return t, policy
    return t, view_policy(cfg)


def _store_paths(cfg: Config) -> list[str]:
    """``teacher.store``, or the stores of ``teacher.stores`` (co-supervision, no single teacher's weights)."""
    tc = cfg.teacher
    if tc.stores:
        if tc.store:
            raise RunError("teacher.store and teacher.stores are both set; keep one (stores: several teachers)")
        if len(tc.stores) < 2:
            raise RunError("teacher.stores needs at least two stores; a single one goes in teacher.store")
        if tc.checkpoint:
            raise RunError("teacher.stores combines several teachers, so teacher.checkpoint (one teacher's weights) "
                           "cannot check them; leave it unset (each store is still checked against the run)")
        return list(tc.stores)
    if not tc.store:
        raise RunError("teacher.store is not set; run `w2s infer-teacher` and point teacher.store at its output")
    return [tc.store]
