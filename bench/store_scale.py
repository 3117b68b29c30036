#!/usr/bin/env python
"""Stage 2 at ImageNet scale (issue 14): per-rank shard reads with read-ahead, in bounded memory.

Writes two ImageNet-shaped stores of random logits (``--samples`` x 1000 classes, chunks of
4096 samples), chunk by chunk with ``SoftLabelStore.write_chunk`` from ``--writers`` processes
(as ``infer()``'s ranks split the missing chunks): ``full`` (float16, K = 1 view) and ``top_k``
(k = 10, K = 10 views). Reported:

- stage 1: write throughput (sample-views/s, MB/s of float16 logits in, MB/s on disk); and resume
  after a kill: the ``full`` store's writers are SIGKILLed once half its chunks are done, then the
  store is reopened, ``missing_chunks()`` listed and the rest written (each step timed).
- stage 2, per layout, order and simulated world size W (1, 2, 8): each rank's rows are
  ``shard_batches(epoch_order(...))`` (``random``, the default global order) or
  ``chunked_shard_batches`` (``chunked``, opt-in), global batch 1024. Bytes decoded per rank and
  epoch are computed for every rank from its rows; rank 0 runs in its own (spawned) process with a
  ``ShardReader``: cold read of epoch 0, peak RSS (``ru_maxrss``), and the stall at the next two epoch
  boundaries while the next epoch is read ahead, for a simulated step time of a ViT-B run
  (``--gpu-img-s`` 3000 img/s over the global batch, i.e. 1024 / 3000 = 0.34 s a step whatever W)
  and of a fast one (``--fast-img-s`` 25,000 img/s: ResNet-18 on 8 A100s in FFCV's figures).
  Steps are simulated by sleeping only while a read is in flight: before it starts and after it
  ends nothing overlaps, so those steps only do their lookups (``params_of`` / ``logits_of``) and
  the boundary stall is what a real epoch of that length would see. ``double`` mode starts the
  next read at once (two shards held); ``bounded`` mode (``free_consumed``) frees consumed rows
  and starts it at ``--bounded-at`` (0.8) of the epoch, holding about 1.2 shards.
- today's read: ``read_view(view, verify=True)`` of the whole view (every rank, every epoch start).
- growth: cold read time and peak RSS of rank 0 (smallest and largest W, random order, full store) for the
  first N samples of the store, N from 50k to the full size.

Goals: stall < 1% of the simulated epoch; peak RSS per rank <= 1.2 x view bytes / W + 1 GiB;
decoded bytes per rank ~ 1/W (only the chunked order gets there: a rank's rows in a random order
hit nearly every chunk). The store files sit in the page cache after writing, so reads do not
include disk time.

    .venv/bin/python bench/store_scale.py --quick            # 100k samples, a few minutes
    .venv/bin/python bench/store_scale.py --json /tmp/store_scale.json   # 1,281,167 samples

Prints a JSON object, then markdown tables; ``--json FILE`` also writes the object to FILE.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from store.soft_label_store import SoftLabelStore  # noqa: E402

IMAGENET_SAMPLES = 1_281_167
PARAM_DIM = 6  # pipeline.data.views.PARAM_DIM (y0, x0, h, w, flip, bicubic); not imported: this bench needs no DALI
GIB = 1 << 30
ORDERS = ("random", "chunked")


# -- sizes -----------------------------------------------------------------------------------------
def row_bytes(layout: str, classes: int, k: int) -> int:
    """Bytes of one sample-view as decoded and held: logits (or top-k parts) and float32 params."""
    logits = 2 * classes if layout == "full" else 2 * k + 2 * k + 4
    return logits + 4 * PARAM_DIM


def layouts(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    return {"full": {"views": 1, "top_k": 0}, "top_k": {"views": args.topk_views, "top_k": args.topk}}


def check_disk(out_dir: Path, args: argparse.Namespace) -> int:
    """Refuse to start when the stores (uncompressed size, an upper bound) would not fit."""
    need = sum(args.samples * spec["views"] * row_bytes(name, args.classes, spec["top_k"]) + 16 * args.samples
               for name, spec in layouts(args).items())
    free = shutil.disk_usage(out_dir).free
    print(f"disk: the stores need up to {need / GIB:.2f} GiB; {free / GIB:.1f} GiB free at {out_dir}", file=sys.stderr)
    if free < 1.1 * need + GIB:
        raise SystemExit(f"not enough free disk at {out_dir}: need {1.1 * need / GIB + 1:.1f} GiB")
    return need


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- child processes -------------------------------------------------------------------------------
def _child(fn: Callable[..., Any], args: tuple[Any, ...], out: Any) -> None:
    try:
        out.put(("ok", fn(*args)))
    except BaseException:  # reported to the parent
        out.put(("error", traceback.format_exc()))


def in_child(fn: Callable[..., Any], *args: Any, timeout: float = 1800) -> Any:
    """``fn(*args)`` in a fresh spawned process (its own RSS); its return value or its traceback raised."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, out))
    proc.start()
    try:
        status, value = out.get(timeout=timeout)
    finally:
        proc.join(timeout=60)
    if status != "ok":
        raise RuntimeError(f"child {fn.__name__} failed:\n{value}")
    return value


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- stage 1 ---------------------------------------------------------------------------------------
def writer(path: str, rank: int, writers: int, seed: int, events: Any) -> None:
    """Write this writer's share of the missing chunks from a small pool of random logits."""
    store = SoftLabelStore.open(path, mode="r+")
    todo = store.missing_chunks()[rank::writers]
    rng = np.random.default_rng([seed, rank])
    cs, c = store.chunk_samples, store.num_classes
    pool = [rng.standard_normal((cs, c), dtype=np.float32) * 3 for _ in range(4)]
    params = rng.random((cs, PARAM_DIM), dtype=np.float32)
    events.put(("start", rank, time.time()))
    busy = 0.0
    for i, chunk in enumerate(todo):
        t0 = time.perf_counter()
        store.write_chunk(chunk, pool[i % len(pool)][:chunk.stop - chunk.start], params[:chunk.stop - chunk.start])
        busy += time.perf_counter() - t0
    events.put(("end", rank, time.time(), busy, len(todo)))


def run_writers(path: Path, writers: int, seed: int, kill_at: float | None = None) -> dict[str, Any]:
    """Spawn the writers; SIGKILL them all once ``kill_at`` of the chunks are done (if given)."""
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    store = SoftLabelStore.open(path)
    total, before = store.done_mask().size, done_rows(store)
    procs = [ctx.Process(target=writer, args=(str(path), r, writers, seed, events)) for r in range(writers)]
    for p in procs:
        p.start()
    starts, ends, killed_at = [], [], None
    while len(ends) < writers:
        try:
            ev = events.get(timeout=0.5)
            (starts if ev[0] == "start" else ends).append(ev)
        except queue.Empty:
            pass
        if kill_at is not None and len(starts) == writers and store.done_mask().mean() >= kill_at:
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
            killed_at = time.time()
            break
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError(f"a writer failed: exit codes {[p.exitcode for p in procs]}")
    for p in procs:
        p.join()
    t0 = min(s[2] for s in starts)
    t1 = killed_at if killed_at is not None else max(e[2] for e in ends)
    store = SoftLabelStore.open(path)
    return {"chunks": int(store.done_mask().sum()), "chunks_total": total, "sample_views": done_rows(store) - before,
            "wall_s": t1 - t0, "killed": killed_at is not None,
            "write_chunk_cpu_s": sum(e[3] for e in ends) if ends else None}


def done_rows(store: SoftLabelStore) -> int:
    """Sample-views whose chunk has its completion record."""
    done = store.done_mask()
    return sum(c.stop - c.start for c in store.chunks() if done[c.block, c.view])


def create_store(path: Path, layout: str, args: argparse.Namespace) -> SoftLabelStore:
    spec = layouts(args)[layout]
    labels = np.random.default_rng(args.seed).integers(0, args.classes, size=args.samples)
    return SoftLabelStore.create(path, num_samples=args.samples, num_views=spec["views"], num_classes=args.classes,
                                 param_dim=PARAM_DIM, chunk_samples=args.chunk_samples, labels=labels,
                                 attrs={"bench": "store_scale"}, layout=layout, top_k=spec["top_k"])


def throughput(phase: dict[str, Any], args: argparse.Namespace, path: Path | None = None) -> dict[str, Any]:
    """Sample-views/s and MB/s (float16 logits in; on disk, when the store's path is given)."""
    samples = phase["sample_views"]
    out = {**phase, "sample_views_per_s": samples / phase["wall_s"],
           "fp16_logits_mb_per_s": samples * 2 * args.classes / phase["wall_s"] / 1e6}
    if path is not None:
        out["disk_bytes"] = dir_bytes(path)
    return out


def stage1(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write both stores; the full one is killed half way and resumed."""
    res: dict[str, Any] = {}
    full = out / "full"
    create_store(full, "full", args)
    killed = run_writers(full, args.writers, args.seed, kill_at=0.5)
    t0 = time.perf_counter()
    store = SoftLabelStore.open(full, mode="r+")
    missing = store.missing_chunks()
    listed_s = time.perf_counter() - t0
    finish = run_writers(full, args.writers, args.seed + 1)
    t1 = time.perf_counter()
    SoftLabelStore.open(full, mode="r+").finalize([0.0])
    finalize_s = time.perf_counter() - t1
    res["resume"] = {"killed_after": killed, "reopen_and_missing_s": listed_s, "missing_chunks": len(missing),
                     "finish": throughput(finish, args), "finalize_s": finalize_s,
                     "complete": SoftLabelStore.open(full).is_complete}
    res["full"] = throughput({"sample_views": killed["sample_views"] + finish["sample_views"],
                              "wall_s": killed["wall_s"] + finish["wall_s"], "chunks_total": killed["chunks_total"]},
                             args, full)
    topk = out / "top_k"
    create_store(topk, "top_k", args)
    written = run_writers(topk, args.writers, args.seed)
    SoftLabelStore.open(topk, mode="r+").finalize([0.0] * args.topk_views)
    res["top_k"] = throughput(written, args, topk)
    return res


# -- stage 2 ---------------------------------------------------------------------------------------
def rank_batches(order: str, n: int, cs: int, global_batch: int, epoch: int, seed: int, rank: int,
                 world: int) -> list[np.ndarray]:
    """This rank's batches of an epoch over the first ``n`` samples, in the given order."""
    from pipeline.data.loader import chunked_shard_batches, epoch_order, shard_batches

    if order == "random":
        return shard_batches(epoch_order(n, epoch, seed, shuffle=True), global_batch, rank, world, drop_last=True)
    return chunked_shard_batches(n, cs, global_batch, epoch, seed, rank, world)


def decoded_bytes(order: str, n: int, cs: int, global_batch: int, seed: int, rank: int, world: int,
                  per_row: int) -> int:
    """Bytes a rank decodes in epoch 0: every row of each chunk its rows touch."""
    rows = np.concatenate(rank_batches(order, n, cs, global_batch, 0, seed, rank, world))
    blocks = np.unique(rows // cs)
    return int(sum(min(cs, n - b * cs) for b in blocks.tolist())) * per_row  # chunk sizes of the first n rows


def simulate(reader: Any, shard: Any, batches: list[np.ndarray], step_s: float, epoch: int) -> dict[str, float]:
    """An epoch's lookups; steps last ``step_s`` only while the next epoch's read is in flight."""
    real, lookup = 0, 0.0
    for b in batches:
        t = time.perf_counter()
        shard.params_of(b)
        shard.logits_of(b)
        spent = time.perf_counter() - t
        lookup += spent
        if reader.reading == epoch + 1:
            real += 1
            if step_s > spent:
                time.sleep(step_s - spent)
    return {"steps": len(batches), "real_time_steps": real, "lookup_ms_per_step": 1e3 * lookup / max(1, len(batches))}


def rank_run(path: str, order: str, n: int, world: int, rank: int, global_batch: int, seed: int,
             profiles: list[tuple[str, float]], mode: str, bounded_at: float) -> dict[str, Any]:
    """One rank (its own process): cold read of epoch 0, then one simulated epoch per profile, each
    ending in a boundary whose stall is measured; ``profiles`` empty: the next epoch's read alone."""
    import threading

    import pipeline.data.loader  # noqa: F401  (torch: imported before timing, counted in the base RSS, as in a trainer)
    from store.shard_reader import ShardReader

    store = SoftLabelStore.open(path)
    cs, views = store.chunk_samples, store.num_views

    def rows_for_epoch(epoch: int) -> tuple[int, np.ndarray]:
        return epoch % views, np.concatenate(rank_batches(order, n, cs, global_batch, epoch, seed, rank, world))

    rss_base = max_rss_bytes()
    bounded = mode == "bounded"
    reader = ShardReader(store, rows_for_epoch, epochs=len(profiles) + 1 if profiles else 2,
                         read_ahead_at=bounded_at if bounded else 0.0, free_consumed=bounded)
    t0 = time.perf_counter()
    shard = reader.get(0)
    cold_s = time.perf_counter() - t0
    held = shard.nbytes
    boundaries = []
    for e, (name, step_s) in enumerate(profiles):
        sim = simulate(reader, shard, rank_batches(order, n, cs, global_batch, e, seed, rank, world), step_s, e)
        t0 = time.perf_counter()
        shard = reader.get(e + 1)
        stall = time.perf_counter() - t0
        epoch_s = sim["steps"] * step_s
        boundaries.append({"profile": name, "step_s": step_s, "epoch_s": epoch_s, "stall_s": stall,
                           "stall_fraction": stall / epoch_s if epoch_s else None, **sim})
    if not profiles:
        shard = reader.get(1)
    del shard
    reader.close()
    stats = [vars(s) for s in reader.stats]
    return {"order": order, "mode": mode, "world": world, "rank": rank, "samples": n, "cold_read_s": cold_s,
            "shard_bytes": held, "rss_base": rss_base, "rss_peak": max_rss_bytes(), "boundaries": boundaries,
            "epochs": stats, "reader_threads_left": sum(t.name.startswith("shard-read-") for t in threading.enumerate())}


def today_run(path: str) -> dict[str, Any]:
    """What each rank does today at each epoch start: the whole view, verified."""
    from pipeline.data.loader import epoch_order  # noqa: F401  (the trainer has torch loaded too)

    store = SoftLabelStore.open(path)
    rss_base = max_rss_bytes()
    t0 = time.perf_counter()
    logits, params = store.read_view(0, verify=True)
    read_s = time.perf_counter() - t0
    return {"read_s": read_s, "rss_base": rss_base, "rss_peak": max_rss_bytes()}


def stage2(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    gpu_step, fast_step = args.global_batch / args.gpu_img_s, args.global_batch / args.fast_img_s
    profiles = [("gpu", gpu_step), ("fast", fast_step)]
    runs, analytic, today = [], [], {}
    for layout, spec in layouts(args).items():
        path = out / layout
        per_row = row_bytes(layout, args.classes, spec["top_k"])
        today[layout] = in_child(today_run, str(path))
        log(f"today {layout}: read_view {today[layout]['read_s']:.1f} s")
        for order in ORDERS:
            for world in args.worlds:
                per_rank = [decoded_bytes(order, args.samples, args.chunk_samples, args.global_batch, args.seed, r,
                                          world, per_row) for r in range(world)]
                analytic.append({"layout": layout, "order": order, "world": world, "decoded_bytes_per_rank": per_rank})
                modes = ["double"] + (["bounded"] if layout == "full" else [])
                for mode in modes:
                    r = in_child(rank_run, str(path), order, args.samples, world, 0, args.global_batch, args.seed,
                                 profiles, mode, args.bounded_at)
                    r.update(layout=layout, view_bytes=args.samples * per_row)
                    assert r["epochs"][0]["bytes"] == per_rank[0], "measured and computed bytes differ"
                    runs.append(r)
                    log(f"{layout} {order} {mode} W={world}: cold {r['cold_read_s']:.1f} s, "
                        f"rss {r['rss_peak'] / GIB:.2f} GiB, stalls "
                        + ", ".join(f"{b['profile']} {b['stall_s'] * 1e3:.0f} ms" for b in r["boundaries"]))
    return {"gpu_step_s": gpu_step, "fast_step_s": fast_step, "runs": runs, "decoded": analytic, "today": today}


def growth(out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.growth:
        for world in sorted({min(args.worlds), max(args.worlds)}):
            r = in_child(rank_run, str(out / "full"), "random", n, world, 0, args.global_batch, args.seed, [],
                         "double", args.bounded_at)
            rows.append({"samples": n, "world": world, "cold_read_s": r["cold_read_s"],
                         "next_read_s": r["epochs"][1]["read_s"], "rss_peak": r["rss_peak"],
                         "rss_base": r["rss_base"], "shard_bytes": r["shard_bytes"]})
            log(f"growth N={n} W={world}: {r['cold_read_s']:.1f} s, rss {r['rss_peak'] / GIB:.2f} GiB")
    return rows


# -- report ----------------------------------------------------------------------------------------
def goals(res: dict[str, Any]) -> None:
    """Mark each stage-2 run against the issue's goals (in place)."""
    base = {(d["layout"], d["order"]): d["decoded_bytes_per_rank"][0] for d in res["stage2"]["decoded"] if d["world"] == 1}
    for r in res["stage2"]["runs"]:
        limit = 1.2 * r["view_bytes"] / r["world"] + GIB
        r["rss_goal"] = limit
        r["rss_ok"] = r["rss_peak"] <= limit
        r["stall_ok"] = all(b["stall_fraction"] < 0.01 for b in r["boundaries"])
    for d in res["stage2"]["decoded"]:
        ref = base.get((d["layout"], d["order"]))
        d["max_over_world1"] = max(d["decoded_bytes_per_rank"]) / ref if ref else None


def tables(res: dict[str, Any]) -> str:
    c = res["config"]
    s1, s2 = res.get("stage1"), res["stage2"]
    lines = [f"{c['samples']:,} samples x {c['classes']} classes, chunks of {c['chunk_samples']}, global batch "
             f"{c['global_batch']}; simulated steps: ViT-B {c['gpu_img_s']:,} img/s -> {s2['gpu_step_s']:.4f} s/step, "
             f"fast {c['fast_img_s']:,} img/s -> {s2['fast_step_s']:.4f} s/step", ""]
    if s1:
        lines += ["| stage 1 | sample-views | on disk | wall | sample-views/s | MB/s fp16 in | MB/s on disk |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in ("full", "top_k"):
            w = s1[name]
            lines.append(f"| {name} ({c['writers']} writers) | {w['sample_views']:,} | {_gb(w['disk_bytes'])} | "
                         f"{w['wall_s']:.1f} s | {w['sample_views_per_s']:,.0f} | {w['fp16_logits_mb_per_s']:.0f} | "
                         f"{w['disk_bytes'] / w['wall_s'] / 1e6:.0f} |")
        rs = s1["resume"]
        k = rs["killed_after"]
        lines += ["", f"resume (full): SIGKILL at {k['chunks']}/{k['chunks_total']} chunks done ({k['wall_s']:.1f} s); "
                      f"reopen + missing_chunks() {rs['reopen_and_missing_s']:.2f} s ({rs['missing_chunks']} missing); "
                      f"finish {rs['finish']['wall_s']:.1f} s; finalize {rs['finalize_s']:.2f} s; complete: {rs['complete']}", ""]
    lines += ["| layout | order | mode | W | decoded / rank / epoch (min..max over ranks) | max vs W=1 | cold read (rank 0) | "
              "base RSS | peak RSS | goal | stall ViT-B (% epoch) | stall fast (% epoch) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    decoded = {(d["layout"], d["order"], d["world"]): d for d in s2["decoded"]}
    for r in s2["runs"]:
        d = decoded[(r["layout"], r["order"], r["world"])]
        b = d["decoded_bytes_per_rank"]
        st = {x["profile"]: x for x in r["boundaries"]}
        lines.append(
            f"| {r['layout']} | {r['order']} | {r['mode']} | {r['world']} | {_gb(min(b))}..{_gb(max(b))} | "
            f"{d['max_over_world1']:.3f} | {r['cold_read_s']:.2f} s | {_gb(r['rss_base'])} | "
            f"{_gb(r['rss_peak'])} {'ok' if r['rss_ok'] else 'OVER'} | "
            f"{_gb(r['rss_goal'])} | {_stall(st['gpu'])} | {_stall(st['fast'])} |")
    lines += ["", "| today: read_view(verify=True) per epoch start, every rank | read | peak RSS |", "|---|---:|---:|"]
    for name, t in s2["today"].items():
        lines.append(f"| {name} | {t['read_s']:.2f} s | {_gb(t['rss_peak'])} |")
    if res.get("growth"):
        lines += ["", "| growth (full, random order, rank 0) N | W | cold read | next read | shard held | peak RSS |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for g in res["growth"]:
            lines.append(f"| {g['samples']:,} | {g['world']} | {g['cold_read_s']:.2f} s | {g['next_read_s']:.2f} s | "
                         f"{_gb(g['shard_bytes'])} | {_gb(g['rss_peak'])} |")
    return "\n".join(lines)


def _gb(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / 2**20:.1f} MiB"


def _stall(b: dict[str, Any]) -> str:
    ok = "ok" if b["stall_fraction"] < 0.01 else "OVER"
    return f"{b['stall_s'] * 1e3:.0f} ms ({100 * b['stall_fraction']:.3f}%) {ok}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- main ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="store_scale_"))
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "json"},
                           "machine": {"cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
                                       "python": platform.python_version(), "numpy": np.__version__,
                                       "zarr": zarr.__version__, "loadavg_1min_at_start": os.getloadavg()[0]}}
    try:
        if args.reuse and SoftLabelStore.exists(out / "full"):
            log(f"reusing the stores in {out}")
        else:
            res["disk_need_bytes"] = check_disk(out, args)
            log("stage 1: writing the stores")
            res["stage1"] = stage1(out, args)
        log("stage 2: per-rank reads")
        res["stage2"] = stage2(out, args)
        res["growth"] = growth(out, args)
        goals(res)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return res


def growth_figure(res: dict[str, Any], path: str | Path) -> None:
    """The growth curve: rank 0's cold read time and peak RSS against N, one line per world size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for world in sorted({g["world"] for g in res["growth"]}):
        pts = sorted((g for g in res["growth"] if g["world"] == world), key=lambda g: g["samples"])
        n = [g["samples"] / 1e6 for g in pts]
        ax1.plot(n, [g["cold_read_s"] for g in pts], marker="o", label=f"W={world}")
        ax2.plot(n, [g["rss_peak"] / GIB for g in pts], marker="o", label=f"W={world}")
    ax1.set(xlabel="samples N (millions), 1000 classes, full float16", ylabel="read of a shard (s)")
    ax2.set(xlabel="samples N (millions)", ylabel="peak RSS of rank 0 (GiB)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("stage 2, global random order: read time grows with N at every W; memory falls with W", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=None, help=f"default {IMAGENET_SAMPLES:,} (--quick: 100,000)")
    p.add_argument("--quick", action="store_true", help="100,000 samples and a short growth curve")
    p.add_argument("--out-dir", default=None, help="where the stores go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    p.add_argument("--reuse", action="store_true", help="reuse the stores already in --out-dir (skips stage 1)")
    p.add_argument("--json", default=None, help="also write the JSON object to this file")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--topk-views", type=int, default=10)
    p.add_argument("--chunk-samples", type=int, default=4096)
    p.add_argument("--global-batch", type=int, default=1024)
    p.add_argument("--worlds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 8])
    p.add_argument("--gpu-img-s", type=float, default=3000.0, help="ViT-B throughput of the whole (8-GPU) job")
    p.add_argument("--fast-img-s", type=float, default=25000.0, help="a fast job's throughput")
    p.add_argument("--bounded-at", type=float, default=0.8, help="bounded mode: read ahead from this fraction")
    p.add_argument("--writers", type=int, default=2, help="stage-1 writer processes")
    p.add_argument("--growth", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="sample counts of the growth curve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default=None, help="also draw the growth curve to this PNG")
    p.add_argument("--from-json", default=None, help="print the tables (and --figure) of an earlier --json; run nothing")
    args = p.parse_args()
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        print(tables(res))
        if args.figure:
            growth_figure(res, args.figure)
        return
    args.samples = args.samples or (100_000 if args.quick else IMAGENET_SAMPLES)
    if args.growth is None:
        points = [12_500, 25_000, 50_000] if args.quick else [50_000, 100_000, 200_000, 400_000, 800_000]
        args.growth = [g for g in points if g < args.samples] + [args.samples]
    t0 = time.perf_counter()
    res = run(args)
    res["total_s"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print()
    print(tables(res))
    if args.figure:
        growth_figure(res, args.figure)


if __name__ == "__main__":
    main()
