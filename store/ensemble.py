"""Several teachers' stores of the same images and views, read as one teacher (co-supervision).

:class:`TeacherEnsemble` offers the read side of :class:`store.protocol.Store` that stage 2 uses
(shape, labels, ``iter_rows`` / ``read_rows``), so the shard reader and the trainer see one
full-layout store. Per row it combines the teachers' distributions at temperature 1:

- ``mean``: ``log mean_k p_k``, the averaged distribution of an ensemble, as in ensemble
  distillation (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network", sec. 1)
  and the multi-teacher average of You et al. 2017 ("Learning from multiple teacher networks", KDD);
- ``weighted``: ``log sum_k w_k p_k`` with fixed weights ``w`` (normalized to sum 1);
- ``max_confidence``: per row, the log-probabilities of the teacher whose top probability is the
  highest, a per-sample choice of one teacher. It looks at the teachers only; Liu & Alahi 2024
  ("Co-supervised learning", arXiv 2402.15505) assign teachers with the student's own predictions,
  which a store read cannot see.

The combined values are log-probabilities, which are valid logits: their softmax at T = 1 is the
combined distribution. Every store must hold the same samples, labels, classes, views and view
parameters (the same crops for the same row), which :func:`open_ensemble`'s caller checks
attribute by attribute and each read checks on the parameters themselves.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from store.chunks import ReadStats, RowChunk, StoreError
from store.protocol import Store

COMBINES = ("mean", "weighted", "max_confidence")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def combine_logits(logits: Sequence[np.ndarray], combine: str, weights: Sequence[float] = ()) -> np.ndarray:
    """``[n, C]`` float32 log-probabilities from the teachers' ``[n, C]`` logits (see the module docstring)."""
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}: choose one of {', '.join(COMBINES)}")
    logp = np.stack([_log_softmax(np.asarray(z, dtype=np.float64)) for z in logits])  # [K, n, C]
    k = len(logp)
    if combine == "max_confidence":
        best = logp.max(axis=-1).argmax(axis=0)  # [n]: the teacher most sure of its top class
        return logp[best, np.arange(logp.shape[1])].astype(np.float32)
    w = np.full(k, 1.0 / k) if combine == "mean" else np.asarray(weights, dtype=np.float64)
    if len(w) != k or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weighted needs {k} non-negative weights that do not all vanish, got {list(weights)}")
    w = w / w.sum()
    with np.errstate(divide="ignore"):  # a zero weight drops its teacher: log 0 = -inf inside the logsumexp
        shifted = logp + np.log(w)[:, None, None]
    top = shifted.max(axis=0)
    return (top + np.log(np.exp(shifted - top).sum(axis=0))).astype(np.float32)


class TeacherEnsemble:
    """Complete stores read as one full-layout store whose logits are the teachers' combination."""

    layout = "full"

    def __init__(self, stores: Sequence[Store], combine: str = "mean", weights: Sequence[float] = ()) -> None:
        if len(stores) < 2:
            raise StoreError("an ensemble needs at least two stores")
        first = stores[0]
        for s in stores[1:]:
            for name in ("num_samples", "num_views", "num_classes", "param_dim"):
                if getattr(s, name) != getattr(first, name):
                    raise StoreError(f"stores {first.path} and {s.path} differ in {name} "
                                     f"({getattr(first, name)} and {getattr(s, name)}); co-supervision needs "
                                     "stores of the same images and views")
            if not np.array_equal(s.labels(), first.labels()):
                raise StoreError(f"stores {first.path} and {s.path} hold different labels for the same rows")
        combine_logits([np.zeros((1, first.num_classes))] * len(stores), combine, weights)  # checks the weights
        self.stores, self.combine, self.weights = list(stores), combine, tuple(weights)
        self.path = " + ".join(s.path for s in stores)

    @property
    def attrs(self) -> dict[str, Any]:
        return self.stores[0].attrs

    @property
    def num_samples(self) -> int:
        return self.stores[0].num_samples

    @property
    def num_views(self) -> int:
        return self.stores[0].num_views

    @property
    def num_classes(self) -> int:
        return self.stores[0].num_classes

    @property
    def param_dim(self) -> int:
        return self.stores[0].param_dim

    @property
    def chunk_samples(self) -> int:
        return self.stores[0].chunk_samples

    @property
    def is_complete(self) -> bool:
        return all(s.is_complete for s in self.stores)

    def labels(self) -> np.ndarray:
        return self.stores[0].labels()

    def empty_parts(self, m: int) -> list[np.ndarray]:
        return [np.empty((m, self.num_classes), dtype=np.float32)]

    def read_rows(self, view: int, rows: np.ndarray, verify: bool = True, stats: ReadStats | None = None,
                  lazy: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The combined logits ``[len(rows), C]`` float32 and the (shared) view params of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        logits, params = [], None
        for s in self.stores:
            z, p = s.read_rows(view, rows, verify, stats)
            if params is None:
                params = p
            elif not np.array_equal(p, params):
                raise StoreError(f"stores {self.stores[0].path} and {s.path} hold different view parameters for "
                                 f"view {view}: their teachers saw different crops; write every store with the "
                                 "same views section and seed")
            logits.append(np.asarray(z, dtype=np.float32))
        assert params is not None
        return combine_logits(logits, self.combine, self.weights), params

    def iter_rows(self, view: int, rows: np.ndarray, verify: bool = True,
                  stats: ReadStats | None = None) -> Iterator[RowChunk]:
        """All of ``rows`` as one chunk (each store is read chunk by chunk underneath)."""
        z, params = self.read_rows(view, rows, verify, stats)
        yield RowChunk(np.arange(len(z)), [z], params)
