"""Stage-1 throughput: ``w2s infer-teacher`` against the teacher's forward pass alone.

Three things are timed in one process, on the same teacher, batch size, threads and images:

(a) ``infer()`` end to end into a fresh store: reading the dataset, loading the teacher, building
    the DALI pipeline, every chunk (view params, replay, forward, zstd + checksum write), the
    per-view accuracy and the completion record;
(b) the chunk loop alone: ``pipeline.infer_teacher.chunk_logits`` (the function ``infer()`` calls
    per chunk) over every sample for one augmented view;
(c) the limit: the teacher's forward on a preloaded batch of its own replayed views, repeated for
    as many images as (a) or (b) processes.

The machine's speed drifts by 20% and more over seconds, so (a) and (b) are each paired with a
(c) run right after them, round by round; the reported ratios are medians of per-round ratios.

Run: ``.venv/bin/python bench/stage1_throughput.py --pair cifar`` (or ``--pair fmnist``).
Prints a JSON object, then a markdown table.
"""
from __future__ import annotations

import dataclasses
import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import (
    PAIRS,
    QUIET,
    REDO_BUDGET,
    base_config,
    clean,
    cpu_window,
    emit,
    machine,
    machine_line,
    make_teacher,
    noisy,
)
from pipeline.infer_teacher import chunk_logits, infer
from pipeline.data.loader import ViewReplayer, crop_size_for
from pipeline.models.pretrained import load_teacher
from pipeline.data.sources.registry import train_and_test
from pipeline.student.specs import teacher_spec, view_policy
from pipeline.data.views import sample_params


def forward_only(model: torch.nn.Module, x: torch.Tensor, images: int, min_seconds: float = 0.5) -> dict[str, Any]:
    """The teacher's forward on the preloaded batch ``x`` for ``images`` images, repeated until the
    window lasts ``min_seconds`` (tiny teachers finish a pass in milliseconds); adds ``images_per_s``."""
    end = cpu_window()
    done, t0 = 0, time.perf_counter()
    with torch.no_grad():
        while done == 0 or time.perf_counter() - t0 < min_seconds:
            for _ in range(math.ceil(images / len(x))):
                model(x)
            done += math.ceil(images / len(x)) * len(x)
    w = end()
    return {**w, "images_per_s": done / w["seconds"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"args": vars(args), "machine": machine()}
    pair = PAIRS[args.pair]
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmpdir:
        tmp = Path(tmpdir)
        pair.prepare(tmp, args.samples, args.test_limit)
        res["teacher"] = make_teacher(args, tmp)
        cfg = base_config(args, tmp, "store", tmp / "unused")
        # what infer() builds, to time its chunk loop and to make the limit's batch of real teacher views
        src, _ = train_and_test(**dataclasses.asdict(cfg.data))
        teacher, meta, _ = load_teacher(cfg.teacher.checkpoint, None, src.num_classes, src.channels)
        policy, spec = view_policy(cfg), teacher_spec(src, meta)
        bs = cfg.teacher.batch_size
        replayer = ViewReplayer(src.image_hw, [spec], bs, crop_size_for(policy, src), cfg.run.device,
                                cfg.run.num_threads, decode=src.encoded)
        idx = np.arange(min(bs, len(src.labels)))
        x = replayer(src.read(idx), sample_params(policy, idx, 1, src.sizes_of(idx)),
                     src.sizes_of(idx) if src.encoded else None)[0].clone()
        n, views = len(src.labels), policy.total_views
        chunk_logits(teacher, src, replayer, policy, 0, n, 1, meta["num_classes"])  # warm-up
        forward_only(teacher, x, n)

        stores = iter(range(10**6))
        rows: dict[str, list[dict[str, Any]]] = {"infer": [], "infer_limit": [], "chunks": [], "chunks_limit": []}
        redos = 0

        def timed_infer() -> dict[str, Any]:
            end = cpu_window()
            infer(base_config(args, tmp, "store", tmp / f"store_{next(stores)}"), console=QUIET)
            return end()

        def timed_chunks() -> dict[str, Any]:
            end = cpu_window()
            chunk_logits(teacher, src, replayer, policy, 0, n, 1, meta["num_classes"])
            return end()

        for _ in range(args.rounds):
            for name, fn in (("infer", timed_infer), ("infer_limit", lambda: forward_only(teacher, x, n * views)),
                             ("chunks", timed_chunks), ("chunks_limit", lambda: forward_only(teacher, x, n))):
                r, k = clean(fn, args.busy_retries)
                rows[name].append(r)
                redos += k
    res["busy_redos"] = redos
    res["samples"], res["views"], res["batch_size"] = n, views, bs
    res["timings"] = rows

    def paired(a: str, b: str, images: int) -> dict[str, Any]:
        both = list(zip(rows[a], rows[b]))
        undisturbed = [(r, s) for r, s in both if not noisy(r) and not noisy(s)]
        use = undisturbed or both
        return {"images_per_s": statistics.median(images / r["seconds"] for r, _ in use),
                "limit_images_per_s": statistics.median(s["images_per_s"] for _, s in use),
                "ratio": statistics.median(images / r["seconds"] / s["images_per_s"] for r, s in use),
                "seconds": statistics.median(r["seconds"] for r, _ in use), "clean_rounds": len(undisturbed),
                "rounds": [r["seconds"] for r, _ in both]}

    res["infer"] = paired("infer", "infer_limit", n * views)
    res["chunk_loop"] = paired("chunks", "chunks_limit", n)
    # per round, end to end minus views x the chunk loop (rough: the two are timed seconds apart)
    res["fixed_cost_s"] = statistics.median(i - views * c for i, c in zip(res["infer"]["rounds"], res["chunk_loop"]["rounds"]))
    return res


def table(res: dict[str, Any]) -> str:
    a, i, c = res["args"], res["infer"], res["chunk_loop"]
    lines = [(f"stage 1: teacher `{a['teacher']}` on {res['samples']} {PAIRS[a['pair']].dataset} images x "
              f"{res['views']} views, batch {res['batch_size']}, {a['threads']} threads, device {a['device']}; "
              f"medians of {a['rounds']} rounds, each timing paired with a teacher-only run right after it"),
             "", "| variant | images/s | teacher-only images/s (paired) | vs teacher-only | note |",
             "|---|---:|---:|---:|---|",
             (f"| (a) `infer()` end to end | {i['images_per_s']:,.0f} | {i['limit_images_per_s']:,.0f} | "
              f"{i['ratio']:.3f} | {i['seconds']:.2f} s, of which fixed costs roughly {res['fixed_cost_s']:.2f} s |"),
             (f"| (b) chunk loop (`chunk_logits`, one view) | {c['images_per_s']:,.0f} | {c['limit_images_per_s']:,.0f} | "
              f"{c['ratio']:.3f} | replay in `stream()`'s prefetch thread + teacher forward |"),
             "", machine_line(res["machine"])]
    bad = [k for k in ("infer", "chunks", "infer_limit", "chunks_limit") if all(noisy(r) for r in res["timings"][k])]
    if bad:
        lines.append(f"WARNING: other processes took CPU time during every timing of {', '.join(bad)}; "
                     "rerun on an idle machine.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="cifar", choices=sorted(PAIRS))
    p.add_argument("--samples", type=int, default=0, help="training images (default: the pair's, 4096 / 1024)")
    p.add_argument("--infer-batch-size", type=int, default=256, help="teacher.batch_size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads and DALI threads (run.num_threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--test-limit", type=int, default=256)
    p.add_argument("--busy-retries", type=int, default=1)
    p.add_argument("--redo-budget", type=float, default=60.0)
    args = p.parse_args()
    pair = PAIRS[args.pair]
    args.samples = args.samples or pair.samples
    args.teacher, args.student, args.batch_size = pair.teacher, pair.student, pair.batch_size
    args.train_teacher = False
    REDO_BUDGET["seconds_left"] = args.redo_budget
    emit(run, table, args)


if __name__ == "__main__":
    main()
