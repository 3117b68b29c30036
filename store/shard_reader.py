"""Each rank's teacher logits and view params for an epoch: only its own rows, read ahead, in bounded memory.

Stage 2 used to read every sample of the epoch's view on every rank at the start of every epoch.
:class:`ShardReader` instead reads the rows a rank will consume (``rows_for_epoch(epoch)``, in
consumption order, as store row ids) with :meth:`SoftLabelStore.iter_rows`, which decodes only
the chunks that hold some of them, and reads the next epoch's rows in a background thread while
the current epoch trains. A rank then holds its own ``N / world`` rows of at most two epochs, plus
one chunk while reading.

Which chunks a rank decodes depends on the order: with the global random order
(``pipeline.data.loader.epoch_order`` + ``shard_batches``) a rank's rows fall in nearly every chunk, so
each rank still decodes about the whole view (only the memory it holds falls as ``1 / world``);
``pipeline.data.loader.chunked_shard_order`` gives each rank whole chunks, so decoding falls too.

Memory can be bounded further with ``free_consumed`` and ``read_ahead_at``: the shard is held in
segments in consumption order, a lookup frees the segments before the one it reads (lookups must
then come in consumption order, as the training stream makes them), and the next epoch's read
starts once that fraction of the current epoch is consumed, so a rank holds about
``(1 - read_ahead_at) + 1`` epochs' shards instead of two.

Only numpy and the store are used here (no torch).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from store.chunks import ReadStats
from store.protocol import Store
from store.topk import reconstruct

RowsFn = Callable[[int], tuple[int, np.ndarray]]


@dataclass
class EpochStats:
    """One epoch's read: what it decoded, how long it took, and how long ``get`` waited for it."""

    epoch: int
    view: int
    rows: int
    chunks: int
    bytes: int
    read_s: float
    wait_s: float = 0.0
    ahead: bool = False  # read in the background while the previous epoch trained


class _Cancelled(Exception):
    """A background read stopped by :meth:`ShardReader.close` or superseded by another epoch."""


class EpochShard:
    """One rank's rows of one epoch's view, held in segments of consecutive consumption positions.

    ``params_of(idx)`` / ``logits_of(idx)`` look rows up by the indices the training loop uses
    (mapped to store rows by ``index_to_row`` when given): params ``[n, P]`` float32, logits
    ``[n, C]`` (float16 for a full store, the float32 reconstruction for a top_k one).
    """

    def __init__(self, store: Store, epoch: int, view: int, rows: np.ndarray,
                 index_to_row: np.ndarray | None, segments: int, free_consumed: bool) -> None:
        self.epoch, self.view, self.num_rows = epoch, view, len(rows)
        self.layout, self.num_classes = store.layout, store.num_classes
        self.index_to_row, self.free_consumed = index_to_row, free_consumed
        order = np.argsort(rows, kind="stable")
        self._sorted_rows = rows[order]
        self._sorted_pos = order.astype(np.int32 if len(rows) < 2**31 else np.int64)
        self.seg_len = max(1, -(-len(rows) // max(1, segments)))
        count = -(-len(rows) // self.seg_len)
        p = store.param_dim
        self._segs: list[list[np.ndarray] | None] = []
        for s in range(count):
            m = min(self.seg_len, len(rows) - s * self.seg_len)
            self._segs.append([*store.empty_parts(m), np.empty((m, p), dtype=np.float32)])
        self.on_progress: Callable[[float], None] | None = None

    # -- filling (the reader's thread, before the shard is handed out) ---------------------------
    def put(self, positions: np.ndarray, parts: list[np.ndarray], params: np.ndarray) -> None:
        """Store rows at their consumption ``positions`` (one chunk's rows from ``iter_rows``)."""
        order = np.argsort(positions, kind="stable")
        pos = positions[order]
        seg = pos // self.seg_len
        cuts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1], True])
        arrays = [*parts, params]
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            s = int(seg[lo])
            dst = self._segs[s]
            assert dst is not None
            local = pos[lo:hi] - s * self.seg_len
            for d, src in zip(dst, arrays):
                d[local] = src[order[lo:hi]]

    # -- lookups (the training loop) ---------------------------------------------------------------
    def positions(self, idx: np.ndarray) -> np.ndarray:
        """Consumption positions of ``idx``; a row this rank does not hold this epoch is an error."""
        idx = np.asarray(idx, dtype=np.int64)
        keys = idx if self.index_to_row is None else self.index_to_row[idx]
        at = np.searchsorted(self._sorted_rows, keys)
        ok = at < len(self._sorted_rows)
        ok[ok] = self._sorted_rows[at[ok]] == keys[ok]
        if not ok.all():
            missing = idx[~ok][:5].tolist()
            raise KeyError(f"epoch {self.epoch}: indices {missing} are not in this rank's shard "
                           "(rows_for_epoch and the training order disagree)")
        return self._sorted_pos[at].astype(np.int64)

    def params_of(self, idx: np.ndarray) -> np.ndarray:
        """View params ``[n, P]`` float32 of ``idx``."""
        return self._gather(idx)[-1]

    def logits_of(self, idx: np.ndarray) -> np.ndarray:
        """Teacher logits ``[n, C]`` of ``idx``: float16 (full store) or float32 reconstructed (top_k)."""
        parts = self._gather(idx)[:-1]
        return parts[0] if self.layout == "full" else reconstruct(*parts, self.num_classes)

    def _gather(self, idx: np.ndarray) -> list[np.ndarray]:
        pos = self.positions(idx)
        if not len(pos):
            return [np.empty((0, *a.shape[1:]), a.dtype) for a in self._first_held()]
        self._advance(int(pos.min()), int(pos.max()))
        seg = pos // self.seg_len
        held = self._first_held()
        out = [np.empty((len(pos), *a.shape[1:]), a.dtype) for a in held]
        for s in np.unique(seg):
            src = self._segs[int(s)]
            if src is None:
                raise KeyError(f"epoch {self.epoch}: positions of segment {int(s)} were already freed "
                               "(free_consumed needs lookups in consumption order)")
            m = seg == s
            local = pos[m] - int(s) * self.seg_len
            for o, a in zip(out, src):
                o[m] = a[local]
        return out

    def _first_held(self) -> list[np.ndarray]:
        return next(s for s in reversed(self._segs) if s is not None)

    def _advance(self, lo: int, hi: int) -> None:
        """Free the segments before ``lo`` (``free_consumed``) and report how far consumption got."""
        if self.free_consumed:
            for s in range(lo // self.seg_len):
                self._segs[s] = None
        if self.on_progress is not None:
            self.on_progress((hi + 1) / max(1, self.num_rows))

    @property
    def nbytes(self) -> int:
        """Bytes of the rows still held (segments not yet freed)."""
        return sum(a.nbytes for s in self._segs if s is not None for a in s)


class _Read:
    """One epoch's read, in a thread: the shard or the exception it ended with."""

    def __init__(self, epoch: int, target: Callable[["_Read"], None], ahead: bool) -> None:
        self.epoch, self.ahead = epoch, ahead
        self.cancel = threading.Event()
        self.shard: EpochShard | None = None
        self.error: BaseException | None = None
        self.stats: EpochStats | None = None
        self.thread = threading.Thread(target=target, args=(self,), name=f"shard-read-{epoch}", daemon=True)
        self.thread.start()


class ShardReader:
    """This rank's rows of each epoch, the next epoch read in the background (double buffer).

    ``rows_for_epoch(epoch) -> (view, rows)`` gives the view and the store rows this rank consumes,
    in consumption order; it runs in the reader's thread. ``get(epoch)`` returns that epoch's
    :class:`EpochShard` (blocking only while its read is unfinished), drops the reader's reference
    to the previous one and starts reading ``epoch + 1`` (at once, or when ``read_ahead_at`` of the
    epoch is consumed). An error in a background read (a corrupt chunk's ``StoreError``) is raised
    by the ``get`` of that epoch. ``index_to_row`` maps the indices lookups receive to store rows
    (the trainer's training part -> store rows; None: they are store rows). ``stats`` lists each
    epoch's read.
    """

    def __init__(self, store: Store, rows_for_epoch: RowsFn, *, epochs: int,
                 index_to_row: np.ndarray | None = None, verify: bool = True, read_ahead_at: float = 0.0,
                 free_consumed: bool = False, segments: int = 32) -> None:
        if not 0.0 <= read_ahead_at < 1.0:
            raise ValueError(f"read_ahead_at must be in [0, 1), got {read_ahead_at}")
        self.store, self.rows_for_epoch, self.epochs = store, rows_for_epoch, epochs
        self.index_to_row = None if index_to_row is None else np.asarray(index_to_row, dtype=np.int64)
        self.verify, self.read_ahead_at = verify, read_ahead_at
        self.free_consumed = free_consumed
        self.segments = segments if free_consumed else 1
        self.stats: list[EpochStats] = []
        self._lock = threading.Lock()
        self._pending: _Read | None = None
        self._current: EpochShard | None = None
        self._closed = False

    def get(self, epoch: int, timeout: float | None = None) -> EpochShard:
        """The epoch's shard; waits for its read (``TimeoutError`` after ``timeout`` s) and re-raises its error."""
        t0 = time.perf_counter()
        with self._lock:
            if self._closed:
                raise RuntimeError("ShardReader is closed")
            read = self._pending
            if read is None or read.epoch != epoch:
                self._stop(read)
                self._current = None  # the old shard goes before a new one is read
                read = self._pending = _Read(epoch, self._run, ahead=False)
        read.thread.join(timeout)
        if read.thread.is_alive():
            raise TimeoutError(f"epoch {epoch}: the shard read is still running after {timeout} s")
        with self._lock:
            if self._pending is read:
                self._pending = None
            if read.error is not None:
                raise read.error
            assert read.shard is not None and read.stats is not None
            shard, self._current = read.shard, read.shard
            read.stats.wait_s = time.perf_counter() - t0
            self.stats.append(read.stats)
            if self.read_ahead_at <= 0.0:
                self._start_locked(epoch + 1)
            else:
                shard.on_progress = self._progress_hook(epoch + 1)
        return shard

    def close(self) -> None:
        """Stop a background read (within one chunk) and drop the shards this reader holds."""
        with self._lock:
            self._closed = True
            read, self._pending, self._current = self._pending, None, None
        self._stop(read)

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def reading(self) -> int | None:
        """The epoch whose read is in flight, if any."""
        read = self._pending
        return read.epoch if read is not None and read.thread.is_alive() else None

    # -- internals -------------------------------------------------------------------------------
    def _progress_hook(self, next_epoch: int) -> Callable[[float], None]:
        """Start the next epoch's read once the current shard is consumed to ``read_ahead_at``."""
        def hook(fraction: float) -> None:
            if fraction < self.read_ahead_at or self._pending is not None:
                return
            with self._lock:
                current = self._current
                if current is not None and current.epoch == next_epoch - 1:  # not a stale shard
                    self._start_locked(next_epoch)
        return hook

    def _start_locked(self, epoch: int) -> None:
        if self._closed or self._pending is not None or epoch >= self.epochs:
            return
        self._pending = _Read(epoch, self._run, ahead=True)

    @staticmethod
    def _stop(read: _Read | None) -> None:
        if read is not None:
            read.cancel.set()
            read.thread.join()

    def _run(self, read: _Read) -> None:
        """The thread's body: compute the epoch's rows, fill a shard chunk by chunk, keep any error."""
        t0 = time.perf_counter()
        try:
            view, rows = self.rows_for_epoch(read.epoch)
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            shard = EpochShard(self.store, read.epoch, int(view), rows, self.index_to_row,
                               self.segments, self.free_consumed)
            stats = ReadStats()
            for rc in self.store.iter_rows(int(view), rows, self.verify, stats):
                if read.cancel.is_set():
                    raise _Cancelled()
                shard.put(rc.positions, rc.parts, rc.params)
            read.stats = EpochStats(read.epoch, int(view), len(rows), stats.chunks, stats.bytes,
                                    time.perf_counter() - t0, ahead=read.ahead)
            read.shard = shard
        except BaseException as exc:  # raised again by get() in the training thread
            read.error = exc
