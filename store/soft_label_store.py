"""A Zarr v3 store of cached teacher logits and view parameters, aligned on (sample, view).

Layout (docs/design.md, "The store"):

- ``logits``       ``[N, V, C]`` float16 (or float32, attr ``dtype``), one chunk = one view of a block of samples, zstd.
- ``view_params``  ``[N, V, P]`` float32, same chunking.
- ``labels``       ``[N]`` int64, the labels the teacher saw.
- with ``layout="top_k"`` instead of ``logits``: ``topk_values`` ``[N, V, k]`` float16,
  ``topk_indices`` ``[N, V, k]`` int16/int32 and ``tail_logsumexp`` ``[N, V]`` float32
  (see ``store/topk.py`` for the reconstruction and what it keeps exact).
- ``chunk_crc``    ``[B, V]`` int64, the crc32 of each written logits chunk, -1 until written.
  It is written after the chunk's data, so it doubles as the completion record that lets an
  interrupted run resume chunk by chunk and lets ``verify`` find corrupt chunks.
- ``manifest.parquet`` (index, label) and ``teacher_accuracy.parquet`` (per view) beside the arrays.

Stage 2 reads a whole view (:meth:`SoftLabelStore.read_view`) or only the rows one rank consumes
(:meth:`SoftLabelStore.read_rows` / :meth:`SoftLabelStore.iter_rows`: only the chunks holding them
are decoded and checked, one at a time; ``store/shard_reader.py`` builds on them).

Group attributes hold the schema version, teacher, dataset and view-policy descriptions and
``status``: "creating" from the first file written until every array and the manifest exist (an
interrupted creation is recognized, :meth:`SoftLabelStore.discard_unfinished` removes it and the
next ``infer-teacher`` creates it anew), then "partial" until :meth:`SoftLabelStore.finalize`, then
"complete". :meth:`SoftLabelStore.open` checks every attribute it relies on, so an edited or damaged
``zarr.json`` ends in one line naming the attribute. Only numpy, zarr, fsspec and pyarrow are used
here so that other tools can read a store without torch.

This is the default implementation of :class:`store.protocol.Store` (see ``store/backends.py``); its
writer lock (:meth:`SoftLabelStore.lock`) is ``store/lock.py``'s: a flock beside a local store, a
heartbeat lease beside one at a URL.
"""
from __future__ import annotations

import errno
import math
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from store.attributes import CREATING, DTYPES, LAYOUTS, SCHEMA_VERSION, check_attributes, first_mismatch
from store.chunks import ChunkRef, StoreError, _crc
from store.lock import writer_lock, writer_lock_held
from store.reads import StoreReads
from store.topk import compress, index_dtype



def _storage_options(path: str) -> dict[str, Any] | None:
    """fsspec options: local ``file://`` URLs create parent folders like plain paths do."""
    return {"auto_mkdir": True} if path.startswith("file://") else None


class SoftLabelStore(StoreReads):
    """Open or create with :meth:`create` / :meth:`open`; see the module docstring for the layout."""

    name: ClassVar[str] = "zarr"
    schemes: ClassVar[tuple[str, ...]] = ()  # none of its own: the default backend serves local paths and every fsspec URL

    def __init__(self, path: str, group: zarr.Group) -> None:
        self.path = str(path)
        self.group = group

    @classmethod
    def create(cls, path: str | Path, *, num_samples: int, num_views: int, num_classes: int,
               param_dim: int, chunk_samples: int, labels: np.ndarray,
               attrs: dict[str, Any], layout: str = "full", top_k: int = 0,
               dtype: str = "float16") -> "SoftLabelStore":
        """Create an empty (status "partial") store; refuses to overwrite an existing one.

        ``dtype`` is the logits' dtype: float16 (half the bytes) or float32 (full layout only: for a
        teacher whose logits exceed float16's range, 65504).
        """
        path = str(path)
        _check_new(num_samples, num_classes, layout, top_k, dtype)
        with _space_for(path, "creating", "the unfinished store is removed and created anew"):
            group = _new_group(path, num_samples=num_samples, num_views=num_views, num_classes=num_classes,
                               param_dim=param_dim, chunk_samples=chunk_samples, labels=labels, attrs=attrs,
                               layout=layout, top_k=top_k, dtype=dtype)
        return cls(path, group)

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether anything (a store or not) is at ``path``; local paths and fsspec URLs."""
        try:
            zarr.open_group(str(path), mode="r", storage_options=_storage_options(str(path)))
            return True
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return False

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "SoftLabelStore":
        """Open an existing store; a missing or foreign directory is a :class:`StoreError`."""
        path = str(path)
        try:
            group = zarr.open_group(path, mode=mode, storage_options=_storage_options(path))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(f"no store at {path}; run `w2s infer-teacher` first") from exc
        if group.attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path} is not a soft-label store of schema {SCHEMA_VERSION}")
        if group.attrs.get("status") == CREATING:
            raise StoreError(f"{path} was interrupted while being created; run `w2s infer-teacher` again, "
                             "which removes it and creates it anew")
        check_attributes(path, group)
        return cls(path, group)

    @staticmethod
    def discard_unfinished(path: str | Path) -> bool:
        """Remove a store whose creation was interrupted (status "creating"); whether one was removed."""
        import fsspec

        path = str(path)
        try:
            group = zarr.open_group(path, mode="r", storage_options=_storage_options(path))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return False
        if group.attrs.get("schema_version") != SCHEMA_VERSION or group.attrs.get("status") != CREATING:
            return False
        fs, root = fsspec.core.url_to_fs(path)
        fs.rm(root, recursive=True)
        return True

    @staticmethod
    def lock_at(path: str | Path) -> AbstractContextManager[Any]:
        """The writer lock of a store at ``path`` (taken before it exists); see ``store/lock.py``."""
        return writer_lock(str(path))

    @staticmethod
    def is_locked(path: str | Path) -> bool:
        """Whether a live writer holds the lock of the store at ``path`` now."""
        return writer_lock_held(str(path))

    def lock(self) -> AbstractContextManager[Any]:
        """This store's writer lock; :class:`store.lock.StoreBusy` while another process holds it."""
        return writer_lock(self.path)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def num_samples(self) -> int:
        return int(self.group.attrs["num_samples"])

    @property
    def num_views(self) -> int:
        return int(self.group.attrs["num_views"])

    @property
    def num_classes(self) -> int:
        return int(self.group.attrs["num_classes"])

    @property
    def param_dim(self) -> int:
        return int(self.group.attrs["param_dim"])

    @property
    def chunk_samples(self) -> int:
        return int(self.group.attrs["chunk_samples"])

    @property
    def layout(self) -> str:
        return str(self.group.attrs.get("layout", "full"))

    @property
    def is_complete(self) -> bool:
        return self.group.attrs.get("status") == "complete"

    def chunks(self) -> Iterator[ChunkRef]:
        """Every (block, view) unit in write order: block-major, views within a block."""
        n, cs = self.num_samples, self.chunk_samples
        for b in range(math.ceil(n / cs)):
            for v in range(self.num_views):
                yield ChunkRef(b, v, b * cs, min(n, (b + 1) * cs))

    def done_mask(self) -> np.ndarray:
        """``[blocks, views]`` bool: which chunks have their completion record."""
        return self.group["chunk_crc"][:] >= 0

    def missing_chunks(self) -> list[ChunkRef]:
        done = self.done_mask()
        return [c for c in self.chunks() if not done[c.block, c.view]]

    def write_chunk(self, chunk: ChunkRef, logits: np.ndarray, params: np.ndarray) -> None:
        """Write one chunk's logits (compressed for top_k) and params, then its completion record last."""
        rows = slice(chunk.start, chunk.stop)
        data = _encode(np.asarray(logits, dtype=np.float32), self.layout, self.group, chunk)
        with _space_for(self.path, "writing", "the chunks written so far are kept"):
            if self.layout == "full":
                self.group["logits"][rows, chunk.view, :] = data[0]
            else:
                self.group["topk_values"][rows, chunk.view, :] = data[0]
                self.group["topk_indices"][rows, chunk.view, :] = data[1]
                self.group["tail_logsumexp"][rows, chunk.view] = data[2]
            self.group["view_params"][rows, chunk.view, :] = np.asarray(params, dtype=np.float32)
            self.group["chunk_crc"][chunk.block, chunk.view] = _crc(*data)

    def chunk_data(self, chunk: ChunkRef) -> list[np.ndarray]:
        rows = slice(chunk.start, chunk.stop)
        if self.layout == "full":
            return [self.group["logits"][rows, chunk.view, :]]
        return [self.group["topk_values"][rows, chunk.view, :], self.group["topk_indices"][rows, chunk.view, :],
                self.group["tail_logsumexp"][rows, chunk.view]]

    def finalize(self, view_accuracy: list[float]) -> None:
        """Mark the store complete once every chunk is written; record per-view accuracy."""
        missing = self.missing_chunks()
        if missing:
            raise StoreError(f"{self.path}: {len(missing)} chunks still missing; cannot finalize")
        with _space_for(self.path, "finishing", "every chunk is kept"):
            _write_parquet({"view": np.arange(len(view_accuracy), dtype=np.int64),
                            "accuracy": np.asarray(view_accuracy, dtype=np.float64)},
                           f"{self.path}/teacher_accuracy.parquet")
            self.group.attrs.update({"status": "complete", "teacher_accuracy": [float(a) for a in view_accuracy]})


    def labels(self) -> np.ndarray:
        return self.group["labels"][:]

    def check_matches(self, expected: Mapping[str, Any]) -> None:
        """Refuse a partial store or one whose attributes differ from ``expected`` (nested keys)."""
        if not self.is_complete:
            raise StoreError(f"{self.path} is partial (status {self.group.attrs.get('status')!r}); "
                             "finish it by running `w2s infer-teacher` again")
        self.check_attrs(expected)

    def check_attrs(self, expected: Mapping[str, Any]) -> None:
        """Raise naming the first attribute (nested key) whose value differs from ``expected``."""
        differs = first_mismatch(self.attrs, expected)
        if differs is not None:
            key, have, want = differs
            raise StoreError(f"store {self.path} does not match this run: {key} is {have!r} in the store but "
                             f"{want!r} here")

    def verify(self) -> list[str]:
        """Recompute every written chunk's crc; return a description of each problem found."""
        return [problem for _, problem in _chunk_problems(self)]

    def invalidate_failing(self) -> int:
        """Un-record every written chunk that fails verification and mark the store partial; how many."""
        crc = self.group["chunk_crc"]
        bad = [c for c, problem in _chunk_problems(self) if not problem.endswith("not written")]
        for c in bad:
            crc[c.block, c.view] = -1
        if bad:
            self.group.attrs.update({"status": "partial"})
        return len(bad)


def _check_new(num_samples: int, num_classes: int, layout: str, top_k: int, dtype: str) -> None:
    """Refuse the arguments of a store that could not hold anything sensible."""
    if num_samples <= 0:
        raise StoreError("cannot create a store for an empty dataset (0 samples)")
    if layout not in LAYOUTS:
        raise StoreError(f"unknown store layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if dtype not in DTYPES or (layout == "top_k" and dtype != "float16"):
        raise StoreError(f"store dtype {dtype!r} is not one of {', '.join(DTYPES)} (top_k stores: float16 only)")
    if layout == "top_k" and not 0 < top_k <= num_classes:
        raise StoreError(f"top_k must be in 1..{num_classes} for the top_k layout, got {top_k}")


def _new_group(path: str, *, num_samples: int, num_views: int, num_classes: int, param_dim: int,
               chunk_samples: int, labels: np.ndarray, attrs: dict[str, Any], layout: str, top_k: int,
               dtype: str) -> zarr.Group:
    """Write a new store's empty arrays, labels and manifest; status "creating" until the last write."""
    try:  # the first write is zarr.json saying "creating": a kill from here on leaves a recognizable store
        group = zarr.open_group(path, mode="w-", zarr_format=3, storage_options=_storage_options(path),
                                attributes={"schema_version": SCHEMA_VERSION, "status": CREATING})
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
        raise StoreError(f"{path} already exists and is not a store of this run; choose another path") from exc
    chunk_samples = max(1, min(chunk_samples, num_samples))
    zstd = ZstdCodec(level=3, checksum=True)
    if layout == "full":
        group.create_array("logits", shape=(num_samples, num_views, num_classes), dtype=dtype,
                           chunks=(chunk_samples, 1, num_classes), compressors=zstd, fill_value=0)
    else:
        group.create_array("topk_values", shape=(num_samples, num_views, top_k), dtype="float16",
                           chunks=(chunk_samples, 1, top_k), compressors=zstd, fill_value=0)
        group.create_array("topk_indices", shape=(num_samples, num_views, top_k),
                           dtype=index_dtype(num_classes).name, chunks=(chunk_samples, 1, top_k),
                           compressors=zstd, fill_value=0)
        group.create_array("tail_logsumexp", shape=(num_samples, num_views), dtype="float32",
                           chunks=(chunk_samples, 1), compressors=zstd, fill_value=0)
    group.create_array("view_params", shape=(num_samples, num_views, param_dim), dtype="float32",
                       chunks=(chunk_samples, 1, param_dim), compressors=zstd, fill_value=0)
    lab = group.create_array("labels", shape=(num_samples,), dtype="int64",
                             chunks=(min(num_samples, 1 << 20),), compressors=zstd, fill_value=0)
    lab[:] = np.asarray(labels, dtype=np.int64)
    blocks = math.ceil(num_samples / chunk_samples)
    group.create_array("chunk_crc", shape=(blocks, num_views), dtype="int64", chunks=(1, 1), fill_value=-1)
    _write_parquet({"index": np.arange(num_samples, dtype=np.int64),
                    "label": np.asarray(labels, dtype=np.int64)}, f"{path}/manifest.parquet")
    group.attrs.update({**attrs, "schema_version": SCHEMA_VERSION, "status": "partial",  # the store exists
                        "num_samples": num_samples, "num_views": num_views, "num_classes": num_classes,
                        "param_dim": param_dim, "chunk_samples": chunk_samples, "dtype": dtype,
                        "layout": layout, "top_k": top_k if layout == "top_k" else None})
    return group


def _encode(lg: np.ndarray, layout: str, group: zarr.Group, chunk: ChunkRef) -> list[np.ndarray]:
    """One chunk's float32 logits as the store holds them (cast, or top-k compressed), checked after the cast."""
    where = f"samples {chunk.start}..{chunk.stop - 1}, view {chunk.view}"
    if not np.isfinite(lg).all():
        raise StoreError(f"teacher produced non-finite logits in {where}")
    if layout == "full":
        with np.errstate(over="ignore"):  # an overflow is reported just below
            data = [lg.astype(group["logits"].dtype)]
    else:
        c = compress(lg, int(group.attrs["top_k"]))
        data = [c["values"], c["indices"], c["tail_lse"]]
    if not all(np.isfinite(a).all() for a in data if a.dtype.kind == "f"):
        raise StoreError(f"teacher logits reach {float(np.abs(lg).max()):.4g} in {where}: beyond the store's "
                         f"{data[0].dtype} (max {float(np.finfo(data[0].dtype).max):.6g}); set teacher.dtype=float32 "
                         "(full layout) or fix the teacher, whose logits this large mean it diverged")
    return data


def _chunk_problems(store: SoftLabelStore) -> list[tuple[ChunkRef, str]]:
    """Every chunk that is not written, does not decode, fails its crc or holds non-finite values."""
    problems: list[tuple[ChunkRef, str]] = []
    crc = store.group["chunk_crc"][:]
    for c in store.chunks():
        name = f"chunk (block {c.block}, view {c.view}) samples {c.start}..{c.stop - 1}"
        if crc[c.block, c.view] < 0:
            problems.append((c, f"{name}: not written"))
            continue
        try:
            data = store.chunk_data(c)
        except Exception as exc:  # a corrupt chunk fails to decode
            problems.append((c, f"{name}: unreadable ({type(exc).__name__}: {exc})"))
            continue
        if _crc(*data) != crc[c.block, c.view]:
            problems.append((c, f"{name}: checksum mismatch"))
        elif not all(np.isfinite(a).all() for a in data if a.dtype.kind == "f"):
            problems.append((c, f"{name}: non-finite logits"))
    return problems


@contextmanager
def _space_for(path: str, doing: str, kept: str) -> Iterator[None]:
    """Turn a full disk (or quota, or file size limit) during a store write into one StoreError line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise StoreError(f"no space left on device while {doing} store {path} ({exc.strerror}); free space or choose "
                         f"another teacher.store, then rerun `w2s infer-teacher`: {kept}") from exc


def _write_parquet(columns: dict[str, np.ndarray], url: str) -> None:
    """Write a small table beside the arrays (a local path or an fsspec URL)."""
    import fsspec

    with fsspec.open(url, "wb", **(_storage_options(url) or {})) as f:
        pq.write_table(pa.table(columns), f)
