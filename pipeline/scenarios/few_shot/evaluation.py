"""``w2s few-shot eval`` (:func:`evaluate`): cosine nearest-centroid accuracy of a saved encoder over
seeded episodes of the novel classes, mean and 95% confidence half-width per shot count.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from pipeline.engine.checkpoint import write_json
from pipeline.scenarios.few_shot.config import FewShotConfig, _save_config
from pipeline.scenarios.few_shot.data import _fixed_views, _load_encoder, _single_process, _split, embed
from pipeline.scenarios.few_shot.episodes import evaluate_episodes
from pipeline.engine.runtime import RunLock, setup, stderr_console
from pipeline.data.sources.base import Source
from pipeline.student.specs import teacher_spec


@torch.no_grad()
def embed_source(model: nn.Module, meta: dict[str, Any], source: Source, batch_size: int, device: torch.device,
                 num_threads: int) -> Tensor:
    """Features ``[N, D]`` (float32, CPU) of every image's fixed view, in the model's own normalization."""
    model.eval()
    order = np.arange(len(source), dtype=np.int64)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    feats = [embed(model, b.inputs[0]).float().cpu()
             for b in _fixed_views(source, [teacher_spec(source, meta)], batches, batch_size, device, num_threads)]
    return torch.cat(feats)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside: episodes are tiny matrix products, and worker threads only add
    synchronization (the 2,000-episode loop ran 10x slower with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(cfg: FewShotConfig, console: Console | None = None) -> dict[str, Any]:
    """Episodic accuracy of ``encoder.checkpoint`` on ``data.test_split`` (with ``data.classes``).

    Every image is embedded once; each shot count in ``episodes.shots`` then gets
    ``episodes.episodes`` episodes drawn from ``episodes.seed`` (same config, same episodes, same
    numbers). Writes ``config.yaml`` and ``result.json`` (accuracies as fractions) to ``run.output``.
    """
    console = console or stderr_console()
    _single_process()
    out = Path(cfg.run.output)
    with RunLock(out):
        device, _ = setup(cfg.run.device, cfg.run.num_threads, cfg.run.seed)
        source = _split(cfg.data, cfg.data.test_split, train=False)
        model, meta, sha = _load_encoder(cfg.encoder.checkpoint, "encoder", source, device)
        e = cfg.episodes
        start = time.perf_counter()
        feats = embed_source(model, meta, source, e.batch_size, device, cfg.run.num_threads)
        shots: dict[str, dict[str, float]] = {}
        for k in e.shots:
            with _one_thread():
                r = evaluate_episodes(lambda x: x, feats, source.labels, e.n_way, k, e.n_query, e.episodes, e.seed,
                                      batch_size=len(feats))
            shots[str(k)] = {"mean": float(r["mean"]), "ci95": float(r["ci95"])}  # type: ignore[arg-type]
            console.print(f"{e.n_way}-way {k}-shot: {100 * r['mean']:.2f} +- {100 * r['ci95']:.2f} %  "  # type: ignore[operator]
                          f"({e.episodes} episodes)")
        result: dict[str, Any] = {
            "encoder": str(cfg.encoder.checkpoint), "encoder_sha256": sha, "model": meta["model"],
            "feature_dim": int(feats.shape[1]), "dataset": {"source": source.name, "split": source.split,
                                                            "num_samples": len(source), "num_classes": source.num_classes},
            "n_way": e.n_way, "n_query": e.n_query, "episodes": e.episodes, "seed": e.seed, "shots": shots,
            "seconds": time.perf_counter() - start,
        }
        _save_config(cfg, out)
        write_json(out / "result.json", result)
    return result
