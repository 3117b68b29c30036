"""Top-k compression of cached teacher logits: the optional ``top_k`` layout of the soft-label store.

The ``full`` layout keeps every logit as float16 (``2 C`` bytes per sample-view: 2,000 bytes for
ImageNet-1k). The ``top_k`` layout keeps, per sample-view,

- ``values``    ``[..., k]`` float16: the k largest logits, in descending order,
- ``indices``   ``[..., k]`` int16 (``C <= 32767``) or int32: their classes,
- ``tail_lse``  ``[...]``    float32: ``log sum_{c not in top-k} exp(z_c)`` (float64 accumulation),

that is ``4k + 4`` bytes with int16 indices (44 bytes for k = 10).

Reconstruction (:func:`reconstruct`) returns full float32 logits ``[..., C]`` so the objectives
(which take ``[B, C]`` logits) are used unchanged: the top-k classes get their stored values and
every other class gets the same logit ::

    l_tail = tail_lse - log(C - k)

clamped to at most the k-th value and strictly below the top-1 value (no-ops in exact arithmetic,
since ``l_tail`` is the log of the mean of the tail's ``exp(z)``, so ``l_tail <= max(tail)``; the
clamp only guards float rounding).

What is exact (relative to the ``full`` layout, i.e. to the float16-rounded logits, which is what
:func:`compress` selects from):

- the hard label: ``argmax`` of the reconstruction is the class ``argmax`` (first maximum, as
  numpy and torch break ties) picks on the float16 logits; ``indices[..., 0]`` is that class,
- at ``T = 1``: the softmax normalizer is ``sum_topk exp(v) + exp(tail_lse)``, the true one, so each
  top-k probability and the total tail mass are exact up to the float32 rounding of ``tail_lse``
  (about 1e-7 relative); relative to the float32 teacher they carry the float16 rounding of the
  logits, as the ``full`` layout does,
- at any ``T``: the ranking of the top-k classes and their probability ratios
  ``p_i / p_j = exp((v_i - v_j) / T)``.

What is approximate: at ``T != 1`` the tail is flattened to a uniform one, so the tail mass is
wrong and the top-k probabilities are off by the normalizer. By the power-mean inequality the
reconstructed tail mass is an upper bound of the true one when ``T > 1`` (the top-k probabilities
are then underestimated) and a lower bound when ``T < 1``; the gap grows with T and with how
unequal the tail logits are. Within the tail, the per-class teacher probabilities are replaced by
their mean at every T, so KD no longer transfers the ranking of the non-top-k classes. With
``k = C`` the reconstruction is the float16 logits exactly. ``bench/topk_store.py`` measures the
KD-loss error for k in {5..100} and T in {1, 2, 4}.

numpy only (no torch), like the rest of ``store/``.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

LAYOUTS = ("full", "top_k")
_ROWS_PER_BLOCK = 4096  # bounds compress()'s temporaries (keys, float64 tail) to ~8 bytes x rows x C


def index_dtype(num_classes: int) -> np.dtype:
    """int16 when every class index fits with room to spare (``C <= 32767``), else int32."""
    return np.dtype(np.int16) if num_classes <= 32767 else np.dtype(np.int32)


def _check_k(k: int, num_classes: int) -> int:
    if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= num_classes:
        raise ValueError(f"k must be an integer in 1..{num_classes} (the number of classes), got {k!r}")
    return int(k)


def _order_keys(h: np.ndarray) -> np.ndarray:
    """Integer keys of float16 rows ``[n, C]``, unique per row: larger logit first, then lower class index.

    Unique keys make the top-k selection deterministic and break ties like ``argmax`` (first maximum).
    The float16 bit pattern is mapped to an unsigned integer that is monotone in the value (sign bit
    flipped for positives, all bits flipped for negatives) and the reversed class index fills the
    low bits: uint32 keys when ``C <= 65536``, else uint64.
    """
    bits = h.view(np.uint16)
    flip = (bits >> 15) * np.uint16(0x7FFF) + np.uint16(0x8000)  # 0xFFFF for negatives, 0x8000 otherwise
    ordered = bits ^ flip
    c = h.shape[-1]
    wide, shift = (np.uint32, 16) if c <= 1 << 16 else (np.uint64, 32)
    return (ordered.astype(wide) << wide(shift)) | (c - 1 - np.arange(c)).astype(wide)


def _compress_rows(h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of float16 rows ``[n, C]``: (values float16 [n, k], indices intp [n, k], tail_lse float32 [n])."""
    n, c = h.shape
    key = _order_keys(h)
    if k == c:
        idx = np.argsort(key, axis=-1)[:, ::-1]
    else:
        part = np.argpartition(key, c - k, axis=-1)[:, c - k:]
        order = np.argsort(np.take_along_axis(key, part, axis=-1), axis=-1)[:, ::-1]
        idx = np.take_along_axis(part, order, axis=-1)
    values = np.take_along_axis(h, idx, axis=-1)
    if k == c:
        return values, idx, np.full(n, -np.inf, dtype=np.float32)
    x = h.astype(np.float64)
    np.put_along_axis(x, idx, -np.inf, axis=-1)
    m = x.max(axis=-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))).astype(np.float32)
    return values, idx, lse


def compress(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Keep the top-k of logits ``[..., C]`` (any float dtype, finite): ``values``, ``indices``, ``tail_lse``.

    The logits are first rounded to float16 (the ``full`` layout's dtype) and the selection is made
    on those, so the ``top_k`` layout is a lossy view of exactly what ``full`` would store. Ties are
    broken toward the lower class index. ``reconstruct(**compress(z, k), num_classes=C)`` gives the
    logits back (see the module docstring for what is exact).
    """
    x = np.asarray(logits)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., C] with C >= 1, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"logits must be floating point, got {x.dtype}")
    c = x.shape[-1]
    k = _check_k(k, c)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16).reshape(-1, c)
    if not np.isfinite(h).all():
        raise ValueError("logits must be finite and within float16 range (|z| <= 65504)")
    h = np.where(h == 0, np.float16(0), h)  # -0.0 ties with +0.0, as in comparisons
    lead = x.shape[:-1]
    values = np.empty((h.shape[0], k), dtype=np.float16)
    indices = np.empty((h.shape[0], k), dtype=index_dtype(c))
    tail = np.empty(h.shape[0], dtype=np.float32)
    for s in range(0, h.shape[0], _ROWS_PER_BLOCK):
        v, i, t = _compress_rows(h[s:s + _ROWS_PER_BLOCK], k)
        values[s:s + len(v)], indices[s:s + len(v)], tail[s:s + len(v)] = v, i, t
    return {"values": values.reshape(*lead, k), "indices": indices.reshape(*lead, k),
            "tail_lse": tail.reshape(lead)}


def reconstruct(values: np.ndarray, indices: np.ndarray, tail_lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Full float32 logits ``[..., C]`` from a top-k record: stored values at ``indices``, ``l_tail`` elsewhere.

    ``l_tail = tail_lse - log(C - k)`` keeps the tail's total probability at T = 1 (module docstring).
    """
    v = np.asarray(values)
    idx = np.asarray(indices)
    t = np.asarray(tail_lse)
    c = int(num_classes)
    if v.ndim < 1 or v.shape != idx.shape or t.shape != v.shape[:-1]:
        raise ValueError(f"values {v.shape} and indices {idx.shape} must be [..., k] and tail_lse {t.shape} [...]")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {idx.dtype}")
    k = _check_k(v.shape[-1], c)
    v = v.astype(np.float32)
    if idx.size and (idx.min() < 0 or idx.max() >= c):
        raise ValueError(f"indices must lie in 0..{c - 1}")
    if k < c and idx.size and (np.diff(np.sort(idx, axis=-1), axis=-1) == 0).any():
        raise ValueError("indices repeat a class within a sample-view")
    if k == c:
        out = np.empty((*v.shape[:-1], c), dtype=np.float32)
    else:
        if not np.isfinite(t).all():
            raise ValueError("tail_lse must be finite when k < num_classes")
        tail = (t.astype(np.float64) - math.log(c - k)).astype(np.float32)
        tail = np.minimum(tail, v[..., -1])
        tail = np.where(tail < v[..., 0], tail, np.nextafter(v[..., 0], np.float32(-np.inf)))
        out = np.repeat(tail[..., None], c, axis=-1)
    np.put_along_axis(out, idx.astype(np.intp), v, axis=-1)
    return out


def bytes_per_sample_view(num_classes: int, k: int | None = None,
                          layout: Literal["full", "top_k"] = "full") -> int:
    """Uncompressed bytes of one sample-view's teacher record (logits only, not view params).

    ``full``: ``2 C`` (float16 logits). ``top_k``: ``2k`` (float16 values) + ``k * 2 or 4`` (int16 /
    int32 indices) + 4 (float32 tail_lse); e.g. C = 1000: 2000 vs 44 bytes for k = 10.
    """
    c = int(num_classes)
    if c < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if layout == "full":
        return 2 * c
    if layout == "top_k":
        if k is None:
            raise ValueError("the top_k layout needs k")
        k = _check_k(k, c)
        return k * np.dtype(np.float16).itemsize + k * index_dtype(c).itemsize + np.dtype(np.float32).itemsize
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
