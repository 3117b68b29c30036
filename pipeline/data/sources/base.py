"""The dataset interface every reader returns: images in memory or on disk, labels, a fingerprint."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


class DataError(ValueError):
    """Raised when a dataset cannot be found or read; the message is one line for the user."""


class Reader(Protocol):
    """Reads one split of a dataset: what ``@register_source`` registers under a ``data.source`` name."""

    def __call__(self, name: str, split: str, data_dir: str | None, image_size: int, skip_corrupt: bool) -> "Source": ...


@dataclass(frozen=True)
class SourceEntry:
    """A registered reader; ``needs_dir`` says what ``data.data_dir`` must hold (None: it is optional)."""

    reader: Reader
    needs_dir: str | None


READERS: dict[str, SourceEntry] = {}


def register_source(*names: str, needs_dir: str | None = None) -> Callable[[Reader], Reader]:
    """Register a reader under the ``data.source`` names given (the decorator of a new dataset).

    Example, in a module that ``pipeline/data/sources/registry.py`` imports::

        @register_source("svhn", needs_dir="the folder holding train_32x32.mat")
        def _read(name, split, data_dir, image_size, skip_corrupt):
            return load_svhn(data_dir, split)
    """
    def add(reader: Reader) -> Reader:
        for name in names:
            if name in READERS:
                raise ValueError(f"data source {name!r} is registered twice")
            READERS[name] = SourceEntry(reader, needs_dir)
        return reader
    return add


class Source(Protocol):
    """What the loaders need of a dataset: labels, per-sample image access and identity."""

    name: str
    split: str
    labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    encoded: bool
    noise_rate: float | None

    def __len__(self) -> int: ...

    @property
    def image_hw(self) -> tuple[int, int]: ...

    @property
    def channels(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray | list[np.ndarray]: ...

    def sizes_of(self, indices: np.ndarray) -> np.ndarray: ...

    def fingerprint(self) -> str: ...

    def subset(self, indices: np.ndarray, split: str) -> "Source": ...

    def with_labels(self, labels: np.ndarray, split: str) -> "Source": ...


@dataclass
class ArraySource:
    """A dataset held in memory as uint8 images ``[N, H, W, C]`` and int64 labels ``[N]``.

    ``name`` and ``split`` identify it in store attributes; ``class_names`` is optional.
    ``mean``/``std`` are the per-channel normalization statistics (0..1 scale) that
    models trained on this dataset use by default.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None = None
    noise_rate: float | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"{self.name}/{self.split}: images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}/{self.split}: {len(self.images)} images but {len(self.labels)} labels")

    encoded = False

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Decoded uint8 images ``[n, H, W, C]``."""
        return self.images[indices]

    def sizes_of(self, indices: np.ndarray) -> np.ndarray:
        """Every image has the same size here: ``[n, 2]`` of ``image_hw``."""
        return np.tile(np.array(self.image_hw, dtype=np.int64), (len(indices), 1))

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def fingerprint(self) -> str:
        """sha256 over the image bytes and labels: identifies the exact content, not the path."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).tobytes())
            h.update(self.labels.astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, indices: np.ndarray, split: str) -> "ArraySource":
        """A new source holding ``indices`` of this one (e.g. the demo's halves A and B)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySource(self.name, split, self.images[idx], self.labels[idx], self.num_classes,
                           self.mean, self.std, self.class_names, self.noise_rate)

    def with_labels(self, labels: np.ndarray, split: str) -> "ArraySource":
        """The same images with other labels (e.g. injected label noise)."""
        return ArraySource(self.name, split, self.images, np.asarray(labels, dtype=np.int64), self.num_classes,
                           self.mean, self.std, self.class_names)
