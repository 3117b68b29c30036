#!/usr/bin/env python
"""How much KD accuracy does the store's ``top_k`` layout (store/topk.py) give up, and how much space does it save?

Teacher logits are generated to resemble an ImageNet classifier (ResNet-50-like: ~80% top-1,
confidence from ~0.05 to ~1 with median ~0.96, confusable class groups); see
:func:`teacher_logits` (``--noise-std/--boost/--group/--margin`` change it). For each k and temperature T the per-sample KD loss
``T^2 KL(p_t || p_s)`` computed from the ``full`` layout's float16 teacher logits is compared with
the same loss computed from ``reconstruct(compress(logits, k))``, against two students:

- ``random``: ``z_s ~ N(0, 2^2)`` per class, unrelated to the teacher (early training),
- ``near``:   ``z_s = z_t + N(0, sigma^2)`` (``--near-noise``, 0.5): a student that already mimics
  the teacher, tail included (late training; the tail's shape matters most here).

A reference row ``fp16`` compares the full float16 logits with the float32 ones: the error the
existing ``full`` layout already accepts. The column ``teacher TV`` is the mean total-variation
distance between the reconstructed and full teacher distributions at T; the gradient of
``T^2 KL`` with respect to the student logits is ``T (p_s - p_t)``, so the per-sample gradient
error is ``2 T TV`` in L1, whatever the student. ``grad rel err`` is the per-sample mean of
``||p_t_rec - p_t||_1 / ||p_s - p_t||_1``: the gradient error relative to the gradient itself
(large for the ``near`` student, whose gradient is small). The loss-value errors include a
student-independent part (the teacher entropy changes) that has no gradient.

Bytes per sample-view: uncompressed (``store.topk.bytes_per_sample_view``), and on disk after
writing both layouts as Zarr v3 arrays with zstd level 3 (chunks ``(4096, 1, C)`` for ``logits``,
``(4096, 1, k)`` for ``topk_values`` / ``topk_indices``, ``(4096, 1)`` for ``tail_logsumexp``):
the bytes of the chunk files divided by ``N V`` (metadata documents excluded).

Run: ``.venv/bin/python bench/topk_store.py [--samples 8192 --views 1 --seed 0]`` (about 20 s on
2 CPU cores). Prints a JSON object and then markdown tables (stdout).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zarr  # noqa: E402
from zarr.codecs import ZstdCodec  # noqa: E402

from store.topk import bytes_per_sample_view, compress, reconstruct  # noqa: E402

CHUNK_SAMPLES = 4096


# -- data ------------------------------------------------------------------------------------------
def teacher_logits(rng: np.random.Generator, n: int, c: int, noise_std: float = 2.0,
                   boost: tuple[float, float] = (2.0, 6.0), group: tuple[int, int] = (3, 30),
                   margin: tuple[float, float] = (5.0, 6.0)) -> tuple[np.ndarray, np.ndarray]:
    """Classifier-like float32 logits ``[n, c]`` and labels ``[n]``.

    Per sample: every class gets ``N(0, noise_std^2)`` noise; a confusable group of
    ``U{group}`` classes (the label's "semantic neighbours", e.g. dog breeds; random classes here)
    gets a common boost ``U(boost)``; the label's logit is then set to
    ``max(other logits) + margin`` with ``margin ~ N(margin[0], margin[1]^2)``. A negative margin
    is a misclassified sample whose top-1 is a neighbour. The defaults give about 80% top-1,
    mean confidence ~0.73 and a median of ~0.96, with a long low-confidence tail (5% quantile
    ~0.09): a ResNet-50-like teacher on ImageNet (measured statistics are in the output's
    ``teacher`` field).
    """
    z = rng.normal(0.0, noise_std, size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, size=n)
    size = rng.integers(group[0], group[1] + 1, size=n)
    lift = rng.uniform(boost[0], boost[1], size=n).astype(np.float32)
    in_group = np.argsort(rng.random((n, c)), axis=1) < size[:, None]
    in_group[np.arange(n), y] = True
    z += np.where(in_group, lift[:, None], np.float32(0))
    z[np.arange(n), y] = -np.inf
    top_other = z.max(axis=1)
    z[np.arange(n), y] = top_other + rng.normal(margin[0], margin[1], size=n).astype(np.float32)
    return z, y


def log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    """float64 log-softmax of ``z / t`` over the last axis (the reference arithmetic)."""
    x = np.asarray(z, dtype=np.float64) / t
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kd_loss(log_pt: np.ndarray, log_ps: np.ndarray, t: float) -> np.ndarray:
    """Per-sample ``T^2 KL(p_t || p_s)`` from log-probabilities."""
    return t * t * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1)


def data_stats(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """What the generated teacher looks like: accuracy, confidence spread, entropy, top-k mass."""
    lp = log_softmax(z, 1.0)
    p = np.exp(lp)
    conf = p.max(axis=1)
    top = -np.sort(-p, axis=1)
    return {"top1_accuracy": float((z.argmax(1) == y).mean()),
            "confidence_mean": float(conf.mean()),
            "confidence_quantiles_5_25_50_75_95": [float(q) for q in np.quantile(conf, [.05, .25, .5, .75, .95])],
            "entropy_mean_nats": float(-(p * lp).sum(1).mean()),
            "top5_mass_mean": float(top[:, :5].sum(1).mean()),
            "top20_mass_mean": float(top[:, :20].sum(1).mean()),
            "logit_std_mean": float(z.std(1).mean()),
            "top1_logit_mean": float(z.max(1).mean())}


# -- storage ---------------------------------------------------------------------------------------
def chunk_bytes(array_dir: Path) -> int:
    """Bytes of an array's chunk files (everything but its zarr.json)."""
    return sum(f.stat().st_size for f in array_dir.rglob("*") if f.is_file() and f.name != "zarr.json")


def on_disk_bytes(tmp: Path, logits16: np.ndarray, records: dict[int, dict[str, np.ndarray]]) -> dict[str, float]:
    """Write the full layout and each top-k layout with zstd 3; bytes per sample-view on disk."""
    n, v, c = logits16.shape
    zstd = ZstdCodec(level=3)
    out: dict[str, float] = {}
    g = zarr.open_group(str(tmp / "full"), mode="w", zarr_format=3)
    a = g.create_array("logits", shape=logits16.shape, dtype="float16",
                       chunks=(CHUNK_SAMPLES, 1, c), compressors=zstd, fill_value=0)
    a[:] = logits16
    out["full"] = chunk_bytes(tmp / "full" / "logits") / (n * v)
    for k, rec in records.items():
        root = tmp / f"top{k}"
        g = zarr.open_group(str(root), mode="w", zarr_format=3)
        total = 0
        for name, key, chunks in (("topk_values", "values", (CHUNK_SAMPLES, 1, k)),
                                  ("topk_indices", "indices", (CHUNK_SAMPLES, 1, k)),
                                  ("tail_logsumexp", "tail_lse", (CHUNK_SAMPLES, 1))):
            arr = rec[key]
            a = g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, compressors=zstd, fill_value=0)
            a[:] = arr
            total += chunk_bytes(root / name)
        out[str(k)] = total / (n * v)
    return out


# -- main ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    n, v, c = args.samples, args.views, args.classes
    z32, y = teacher_logits(rng, n * v, c, args.noise_std, tuple(args.boost), tuple(args.group), tuple(args.margin))
    z16 = z32.astype(np.float16)
    students = {"random": rng.normal(0.0, 2.0, size=(n * v, c)).astype(np.float32),
                "near": (z32 + rng.normal(0.0, args.near_noise, size=(n * v, c))).astype(np.float32)}

    records: dict[int, dict[str, np.ndarray]] = {}
    timing: dict[str, dict[str, float]] = {}
    recon: dict[int, np.ndarray] = {}
    for k in args.ks:
        t0 = time.perf_counter()
        records[k] = compress(z16.reshape(n, v, c), k)
        t1 = time.perf_counter()
        recon[k] = reconstruct(**records[k], num_classes=c).reshape(n * v, c)
        t2 = time.perf_counter()
        timing[str(k)] = {"compress_rows_per_s": n * v / (t1 - t0), "reconstruct_rows_per_s": n * v / (t2 - t1)}

    results: list[dict[str, Any]] = []
    for t in args.temperatures:
        lp_full = log_softmax(z16, t)
        p_full = np.exp(lp_full)
        lp_students = {name: log_softmax(s, t) for name, s in students.items()}
        full_loss = {name: kd_loss(lp_full, lps, t) for name, lps in lp_students.items()}
        candidates: list[tuple[str, np.ndarray]] = [("fp16", log_softmax(z32, t))]
        candidates += [(str(k), log_softmax(recon[k], t)) for k in args.ks]
        for label, lp in candidates:
            diff = np.abs(np.exp(lp) - p_full).sum(axis=1)
            tv = float(0.5 * diff.mean())
            for name, lps in lp_students.items():
                grad_norm = np.abs(np.exp(lps) - p_full).sum(axis=1)  # ||grad||_1 / T of the full-layout loss
                ref = full_loss[name]
                # the fp16 row compares float32 logits (candidate) with float16 ones (reference)
                got = kd_loss(lp, lps, t)
                err = np.abs(got - ref)
                results.append({"k": label, "T": t, "student": name,
                                "kd_mean_full": float(ref.mean()),
                                "abs_err_mean": float(err.mean()), "abs_err_max": float(err.max()),
                                "rel_err_batch_mean": float(abs(got.mean() - ref.mean()) / ref.mean()),
                                "teacher_tv_mean": tv,
                                "grad_rel_err_mean": float((diff / grad_norm).mean())})

    with tempfile.TemporaryDirectory(prefix="topk_bench_") as tmp:
        disk = on_disk_bytes(Path(tmp), z16.reshape(n, v, c), records)
    storage = [{"layout": "full", "k": None, "raw_bytes": bytes_per_sample_view(c, layout="full"),
                "zstd3_bytes": disk["full"]}]
    storage += [{"layout": "top_k", "k": k, "raw_bytes": bytes_per_sample_view(c, k, "top_k"),
                 "zstd3_bytes": disk[str(k)], **timing[str(k)]} for k in args.ks]
    return {"config": {"samples": n, "views": v, "classes": c, "ks": args.ks, "temperatures": args.temperatures,
                       "seed": args.seed, "near_noise": args.near_noise,
                       "noise_std": args.noise_std, "boost": args.boost, "group": args.group, "margin": args.margin, "chunk_samples": CHUNK_SAMPLES},
            "machine": {"python": platform.python_version(), "numpy": np.__version__, "zarr": zarr.__version__,
                        "processor": platform.processor() or platform.machine()},
            "teacher": data_stats(z32, y), "storage": storage, "kd": results}


def tables(res: dict[str, Any]) -> str:
    """Markdown: storage per layout, then KD-loss error per (k, T, student)."""
    full = res["storage"][0]
    lines = ["| layout | raw bytes / sample-view | zstd-3 bytes on disk | vs full (on disk) |",
             "|---|---:|---:|---:|"]
    for s in res["storage"]:
        name = "full (float16)" if s["layout"] == "full" else f"top_k, k={s['k']}"
        lines.append(f"| {name} | {s['raw_bytes']} | {s['zstd3_bytes']:.1f} | "
                     f"{s['zstd3_bytes'] / full['zstd3_bytes']:.3f} |")
    lines += ["", "| k | T | student | mean KD (full) | mean abs err | max abs err | rel err of batch mean | teacher TV | grad rel err |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(res["kd"], key=lambda r: (r["k"] != "fp16", int(r["k"]) if r["k"] != "fp16" else 0,
                                              r["T"], r["student"])):
        k = "fp16 vs fp32" if r["k"] == "fp16" else r["k"]
        lines.append(f"| {k} | {r['T']:g} | {r['student']} | {r['kd_mean_full']:.4g} | {r['abs_err_mean']:.2e} | "
                     f"{r['abs_err_max']:.2e} | {r['rel_err_batch_mean']:.2e} | {r['teacher_tv_mean']:.2e} | {r['grad_rel_err_mean']:.2e} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20, 50, 100])
    p.add_argument("--temperatures", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 4.0])
    p.add_argument("--near-noise", type=float, default=0.5, help="std of the 'near' student's noise around the teacher")
    p.add_argument("--noise-std", type=float, default=2.0, help="teacher: std of every class's Gaussian logit noise")
    p.add_argument("--boost", type=float, nargs=2, default=[2.0, 6.0], help="teacher: neighbour-group boost range")
    p.add_argument("--group", type=int, nargs=2, default=[3, 30], help="teacher: neighbour-group size range")
    p.add_argument("--margin", type=float, nargs=2, default=[5.0, 6.0], help="teacher: label margin mean and std")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    res = run(args)
    res["wall_s"] = time.perf_counter() - t0
    print(json.dumps(res, indent=1))
    print()
    print(tables(res))


if __name__ == "__main__":
    main()
