"""Reading a store: whole views (:meth:`StoreReads.read_view`) or a rank's rows (:meth:`StoreReads.read_rows`).

:class:`StoreReads` is the read side of :class:`store.soft_label_store.SoftLabelStore` (a mixin over
its ``group``, ``path`` and layout properties). Every chunk a read touches is checked against its
recorded checksum and for non-finite values, so a store damaged after it was written is refused
with one line naming the chunk.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import zarr

from store.chunks import ChunkRef, ReadStats, RowChunk, StoreError, TopKLogits, _crc
from store.topk import reconstruct


class StoreReads:
    """Whole-view and per-row reads of a :class:`~store.soft_label_store.SoftLabelStore`."""

    path: str
    group: zarr.Group
    num_samples: int
    num_views: int
    num_classes: int
    chunk_samples: int
    layout: str

    def chunks(self) -> Iterator[ChunkRef]:
        raise NotImplementedError

    def read_view(self, view: int, indices: np.ndarray | None = None,
                  verify: bool = False) -> tuple[Any, np.ndarray]:
        """Logits ``[n, C]`` and params ``[n, P]`` float32 of one view (all samples, or ``indices``).

        Full stores give float16 arrays; top_k stores give float32 reconstructions, lazily
        (a :class:`TopKLogits`) when all samples are asked for. ``verify`` (whole views only)
        checks every chunk read against its recorded checksum and for non-finite values, so a
        store damaged after it was written is refused, naming the chunk.
        """
        if not 0 <= view < self.num_views:
            raise StoreError(f"view {view} out of range: the store has {self.num_views} views")
        g = self.group
        sel: Any = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)

        def get(name: str) -> np.ndarray:
            arr = g[name]
            key = (sel, view) + (slice(None),) * (arr.ndim - 2)
            return arr[key] if indices is None else arr.get_orthogonal_selection(key)

        params = get("view_params")
        names = ["logits"] if self.layout == "full" else ["topk_values", "topk_indices", "tail_logsumexp"]
        try:
            arrays = [get(n) for n in names]
        except Exception as exc:  # a chunk that no longer decodes
            raise StoreError(f"store {self.path}: view {view} cannot be read ({type(exc).__name__}: {exc}); "
                             "run `w2s inspect --verify` to find the damaged chunk") from exc
        if verify and indices is None:
            self._verify_view(view, arrays)
        if self.layout == "full":
            return arrays[0], params
        lazy = TopKLogits(arrays[0], arrays[1], arrays[2], self.num_classes)
        return (lazy if indices is None else lazy[:]), params

    def _verify_view(self, view: int, arrays: list[np.ndarray]) -> None:
        crc = self.group["chunk_crc"][:, view]
        for c in self.chunks():
            if c.view != view:
                continue
            self._check_chunk(c, [a[c.start:c.stop] for a in arrays], int(crc[c.block]))

    def _check_chunk(self, c: ChunkRef, data: list[np.ndarray], recorded_crc: int) -> None:
        """Refuse a chunk whose data no longer has its recorded crc or holds non-finite values."""
        if _crc(*data) != recorded_crc or not all(np.isfinite(d).all() for d in data if d.dtype.kind == "f"):
            raise self._corrupt(c)

    def _corrupt(self, c: ChunkRef) -> StoreError:
        return StoreError(f"store {self.path}: chunk (block {c.block}, view {c.view}) samples "
                          f"{c.start}..{c.stop - 1} is corrupt (checksum mismatch or non-finite logits); "
                          "`w2s infer-teacher CONFIG --repair` recomputes the chunks that fail verification")

    def _part_names(self) -> list[str]:
        return ["logits"] if self.layout == "full" else ["topk_values", "topk_indices", "tail_logsumexp"]

    def iter_rows(self, view: int, rows: np.ndarray, verify: bool = True,
                  stats: ReadStats | None = None) -> Iterator[RowChunk]:
        """The requested ``rows`` of one view, one chunk at a time, decoding only chunks that hold some.

        Each chunk is read whole with a plain slice (one decode per array), checked against its
        recorded crc and for non-finite values when ``verify``, and dropped before the next one is
        decoded, so a caller that copies the rows out holds its output plus one chunk. Chunks come
        in block order; ``positions`` say where each row sits in ``rows`` (any order, repeats allowed).
        """
        if not 0 <= view < self.num_views:
            raise StoreError(f"view {view} out of range: the store has {self.num_views} views")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n, cs = self.num_samples, self.chunk_samples
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise StoreError(f"store {self.path}: rows {rows.min()}..{rows.max()} fall outside its {n} samples")
        order = np.argsort(rows, kind="stable")
        blocks = rows[order] // cs
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]]) if len(rows) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(rows)]
        arrays = [self.group[name] for name in self._part_names()]
        params_arr = self.group["view_params"]
        crc = self.group["chunk_crc"][:, view] if verify else None
        for lo, hi in zip(starts, ends):
            b = int(blocks[lo])
            c = ChunkRef(b, view, b * cs, min(n, (b + 1) * cs))
            try:
                data = [a[c.start:c.stop, view] for a in arrays]
                params = params_arr[c.start:c.stop, view]
            except Exception as exc:  # a chunk that no longer decodes
                raise self._corrupt(c) from exc
            if crc is not None:
                self._check_chunk(c, data, int(crc[b]))
            if stats is not None:
                stats.chunks += 1
                stats.bytes += sum(d.nbytes for d in data) + params.nbytes
                stats.rows += hi - lo
            positions = order[lo:hi]
            local = rows[positions] - c.start
            yield RowChunk(positions, [d[local] for d in data], params[local])
            del data, params

    def read_rows(self, view: int, rows: np.ndarray, verify: bool = True, stats: ReadStats | None = None,
                  lazy: bool = False) -> tuple[Any, np.ndarray]:
        """Logits and params ``[len(rows), P]`` float32 of one view for exactly ``rows`` (store row ids, any order).

        Logits are float16 for full stores and the float32 reconstruction for top_k stores (what
        ``read_view(view)[0][rows]`` gives), or, with ``lazy``, a :class:`TopKLogits` over the
        selected rows that reconstructs rows when indexed. Only chunks that hold some of ``rows``
        are decoded and checked (see :meth:`iter_rows`); peak memory is the output plus one chunk.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        m = len(rows)
        params = np.empty((m, self.group["view_params"].shape[-1]), dtype=np.float32)
        if self.layout == "top_k" and not lazy:
            out = np.empty((m, self.num_classes), dtype=np.float32)
            for rc in self.iter_rows(view, rows, verify, stats):
                out[rc.positions] = reconstruct(*rc.parts, self.num_classes)
                params[rc.positions] = rc.params
            return out, params
        parts = self.empty_parts(m)
        for rc in self.iter_rows(view, rows, verify, stats):
            for dst, src in zip(parts, rc.parts):
                dst[rc.positions] = src
            params[rc.positions] = rc.params
        if self.layout == "full":
            return parts[0], params
        return TopKLogits(parts[0], parts[1], parts[2], self.num_classes), params

    def empty_parts(self, m: int) -> list[np.ndarray]:
        """Uninitialized arrays for ``m`` rows of one view of each stored logits array (see :class:`RowChunk`)."""
        out = []
        for name in self._part_names():
            arr = self.group[name]
            out.append(np.empty((m, *arr.shape[2:]), dtype=arr.dtype))
        return out
