"""Stage 1: run the weak teacher once over the fixed view and K augmented views; write the store.

Work is done chunk by chunk (one view of a block of samples); each chunk's completion record is
written after its data, so a rerun of the same command computes only the missing chunks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from pipeline.config.schema import Config, TeacherConfig
from pipeline.data.loader import ViewReplayer, crop_size_for, stream
from pipeline.models.pretrained import load_teacher
from pipeline.engine.resource_checks import check_batch, check_store_size
from pipeline.engine.runtime import RunError, barrier, env_rank, setup, stderr_console
from pipeline.data.sources.base import Source
from pipeline.scenario import training_rows
from pipeline.data.sources.registry import train_and_test
from pipeline.student.specs import dataset_record, fed_teacher_meta, teacher_spec, view_policy
from pipeline.data.views import PARAM_DIM, ViewPolicy, sample_params
from store.backends import store_backend, store_lock
from store.protocol import Store


def infer(cfg: Config, console: Console | None = None, repair: bool = False) -> dict[str, Any]:
    """Create or resume the store at ``teacher.store``; returns a summary (per-view accuracy, chunks done)."""
    console = console or stderr_console()
    tc = cfg.teacher
    if not tc.checkpoint:
        raise RunError("teacher.checkpoint is not set (a `w2s train-teacher` run directory or model.safetensors)")
    if not tc.store:
        raise RunError("teacher.store is not set (where to write the store)")
    device, info = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed)
    source, _ = train_and_test(**dataclasses.asdict(cfg.data))
    kept = training_rows(cfg, source)  # a scenario's rows (the Sel-CL+ fine-tuning set)
    if kept is not None:
        source = kept[0]
    teacher, meta, sha = load_teacher(tc.checkpoint, tc.model, source.num_classes, source.channels)
    teacher = teacher.to(device)
    if source.num_classes != meta["num_classes"]:
        raise RunError(f"teacher predicts {meta['num_classes']} classes but {source.name} has {source.num_classes}")
    if int(source.labels.max()) >= meta["num_classes"] or int(source.labels.min()) < 0:
        raise RunError(f"labels of {source.name} fall outside the teacher's {meta['num_classes']} classes")
    if source.noise_rate is not None and info.is_main:
        console.print(f"label noise {cfg.data.noise_mode} at rate {cfg.data.noise_rate}: "
                      f"{100 * source.noise_rate:.2f}% of the stored labels differ from the clean ones")
    policy = view_policy(cfg)
    spec = teacher_spec(source, fed_teacher_meta(cfg, source, meta))
    check_batch("teacher.batch_size", tc.batch_size, source.channels, max(spec.size), len(source))
    if not store_backend(tc.store).exists(tc.store):
        check_store_size(tc.store, len(source), policy.total_views, meta["num_classes"], tc.chunk_samples,
                         2 if tc.dtype == "float16" else 4, PARAM_DIM, cfg.views.num_views)
    attrs = {"teacher": {"model": meta["model"], "sha256": sha, "num_classes": meta["num_classes"],
                         "checkpoint": str(tc.checkpoint), "mean": list(spec.mean), "std": list(spec.std),
                         "input_size": spec.size[0]},
             "dataset": dataset_record(source), "view_policy": policy.describe(),
             "output_size": list(spec.size)}
    path = tc.store
    with store_lock(path) if env_rank() == 0 else contextlib.nullcontext():  # rank 0 holds it for the job
        if info.is_main:
            store = _open_or_create(path, source.labels, policy.total_views, meta["num_classes"], tc, attrs, console)
            if repair:
                bad = store.invalidate_failing()
                console.print(f"store {path}: {bad} chunks failed verification" + ("; recomputing them" if bad else ""))
        barrier(info)
        if not info.is_main:
            store = store_backend(path).open(path, mode="r+")
        if store.is_complete:
            console.print(f"store {path} is complete; nothing to do"
                          + ("" if repair else " (`--repair` verifies every chunk and recomputes the failing ones)"))
            return {"store": str(path), "computed_chunks": 0, "teacher_accuracy": store.attrs["teacher_accuracy"]}
        missing = store.missing_chunks()
        todo = missing[info.rank::info.world]  # disjoint chunks per rank
        replayer = ViewReplayer(source.image_hw, [spec], min(tc.batch_size, store.chunk_samples),
                                crop_size_for(policy, source), cfg.run.device, cfg.run.num_threads,
                                decode=source.encoded)
        with Progress(TextColumn("infer-teacher"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("", total=len(todo))
            for chunk in todo:
                logits, params = chunk_logits(teacher, source, replayer, policy, chunk.start, chunk.stop, chunk.view,
                                              meta["num_classes"])
                store.write_chunk(chunk, logits, params)
                bar.advance(task)
        barrier(info)
        accuracy = view_accuracy(store)
        if info.is_main:
            store.finalize(accuracy)
        barrier(info)
    console.print(f"wrote {len(missing)} chunks to {path} ({len(todo)} by this process); teacher accuracy per view: "
                  + ", ".join(f"{a:.4f}" for a in accuracy))
    return {"store": str(path), "computed_chunks": len(missing), "teacher_accuracy": accuracy}


def chunk_logits(teacher: torch.nn.Module, source: Source, replayer: ViewReplayer, policy: ViewPolicy,
                 start: int, stop: int, view: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's float32 logits ``[n, C]`` on view ``view`` of samples ``start:stop``, and that view's params."""
    idx = np.arange(start, stop)
    params = sample_params(policy, idx, view, source.sizes_of(idx))
    logits = np.empty((len(idx), num_classes), dtype=np.float32)
    parts = np.array_split(idx, math.ceil(len(idx) / replayer.batch_size))
    with torch.no_grad():
        for b in stream(source, parts, replayer, lambda ix: params[ix - start]):
            logits[b.indices - start] = teacher(b.inputs[0]).float().cpu().numpy()
    return logits, params


def view_accuracy(store: Store) -> list[float]:
    """Teacher accuracy against the stored labels, per view."""
    labels = store.labels()
    return [float((store.read_view(v)[0].argmax(1) == labels).mean()) for v in range(store.num_views)]


def _open_or_create(path: str, labels: np.ndarray, views: int, classes: int, tc: TeacherConfig,
                    attrs: dict[str, Any], console: Console) -> Store:
    """Resume a matching store (complete or partial); recreate one whose creation was interrupted;
    refuse one made from other inputs."""
    backend = store_backend(path)
    if backend.discard_unfinished(path):
        console.print(f"store {path} was interrupted while being created; creating it anew")
    if backend.exists(path):
        store = backend.open(path, mode="r+")
        expected = {**attrs, "teacher": {k: v for k, v in attrs["teacher"].items() if k != "checkpoint"}}
        store.check_attrs({**expected, "layout": tc.layout, "dtype": tc.dtype})
        return store
    return backend.create(path, num_samples=len(labels), num_views=views, num_classes=classes, param_dim=PARAM_DIM,
                          chunk_samples=tc.chunk_samples, labels=labels, attrs=attrs, layout=tc.layout,
                          top_k=tc.top_k, dtype=tc.dtype)

