"""The store's small types: its error, chunk references, read statistics, checksums and lazy top-k logits."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from store.topk import reconstruct


class StoreError(ValueError):
    """A store is missing, partial, corrupt or does not match the run; the message is one line."""


@dataclass(frozen=True)
class ChunkRef:
    """One unit of stage-1 work and of resume: a block of samples for one view."""

    block: int
    view: int
    start: int
    stop: int


@dataclass
class ReadStats:
    """What row reads decoded: chunks (one view of one block, every array of it) and their bytes."""

    chunks: int = 0
    bytes: int = 0
    rows: int = 0


@dataclass(frozen=True)
class RowChunk:
    """The rows of one chunk that a row read asked for: their positions in the request, the stored
    arrays of those rows (``[logits]`` or ``[topk_values, topk_indices, tail_logsumexp]``) and params."""

    positions: np.ndarray
    parts: list[np.ndarray]
    params: np.ndarray


def _crc(*arrays: np.ndarray) -> int:
    value = 0
    for a in arrays:
        value = zlib.crc32(np.ascontiguousarray(a).tobytes(), value)
    return value & 0xFFFFFFFF


class TopKLogits:
    """Lazy ``[N, C]`` logits of one view of a top_k store: rows are reconstructed when indexed."""

    def __init__(self, values: np.ndarray, indices: np.ndarray, tail: np.ndarray, num_classes: int) -> None:
        self.values, self.indices, self.tail, self.num_classes = values, indices, tail, num_classes
        self.shape = (len(values), num_classes)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return reconstruct(self.values[idx], self.indices[idx], self.tail[idx], self.num_classes)

    def argmax(self, axis: int = 1) -> np.ndarray:
        """The hard labels, exact: the first stored index is the top-1 class."""
        return self.indices[:, 0].astype(np.int64)
