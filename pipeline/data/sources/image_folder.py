"""ImageFolder datasets (``<root>/<split>/<class>/*.JPEG``, the ImageNet layout) as encoded files.

The files are read as bytes and decoded by DALI (on the GPU with the "mixed" decoder, on CPU
here). Scanning reads every image's header for its size (random-resized-crop boxes need it) and
checks that JPEGs end with their end-of-image marker, so unreadable or truncated files are found
before training: by default the scan fails listing them; ``skip_corrupt`` drops and counts them.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.sources.base import DataError, register_source

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class FileSource:
    """Image files with labels and their pixel sizes; ``read`` returns the encoded bytes."""

    name: str
    split: str
    paths: list[str]
    labels: np.ndarray
    sizes: np.ndarray
    num_classes: int
    class_names: list[str]
    output_hw: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    skipped: list[str] = field(default_factory=list)
    noise_rate: float | None = None
    encoded = True

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_hw(self) -> tuple[int, int]:
        """The default output size (files differ in size; ``sizes_of`` gives each one's)."""
        return self.output_hw

    @property
    def channels(self) -> int:
        return 3

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        return [np.fromfile(self.paths[i], dtype=np.uint8) for i in indices]

    def sizes_of(self, indices: np.ndarray) -> np.ndarray:
        return self.sizes[np.asarray(indices, dtype=np.int64)]

    def fingerprint(self) -> str:
        """sha256 over relative paths, byte sizes, pixel sizes and labels (hashing every byte of
        ImageNet would take longer than a training epoch)."""
        h = hashlib.sha256()
        root = os.path.commonpath(self.paths) if self.paths else ""
        for p, lab, hw in zip(self.paths, self.labels, self.sizes):
            h.update(f"{os.path.relpath(p, root)}|{os.path.getsize(p)}|{lab}|{hw[0]}x{hw[1]}\n".encode())
        return h.hexdigest()

    def subset(self, indices: np.ndarray, split: str) -> "FileSource":
        idx = np.asarray(indices, dtype=np.int64)
        return FileSource(self.name, split, [self.paths[i] for i in idx], self.labels[idx], self.sizes[idx],
                          self.num_classes, self.class_names, self.output_hw, self.mean, self.std, self.skipped,
                          self.noise_rate)

    def with_labels(self, labels: np.ndarray, split: str) -> "FileSource":
        """The same files with other labels (e.g. injected label noise)."""
        return FileSource(self.name, split, self.paths, np.asarray(labels, dtype=np.int64), self.sizes,
                          self.num_classes, self.class_names, self.output_hw, self.mean, self.std, self.skipped)


def _probe(path: str) -> tuple[int, int] | str:
    """(height, width) from the header, or the reason the file is unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                if f.read(2) != b"\xff\xd9":
                    return "truncated JPEG (no end-of-image marker)"
        return int(h), int(w)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def load_image_folder(root: str | os.PathLike, split: str, output_size: int = 224, skip_corrupt: bool = False,
                      workers: int = 8) -> FileSource:
    """Scan ``root/split/<class>/*``; class ids follow the sorted class folder names."""
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(f"image folder {base} not found (expected {root}/{split}/<class>/<image>)")
    classes = sorted(d.name for d in os.scandir(base) if d.is_dir())
    if not classes:
        raise DataError(f"{base} holds no class folders")
    paths, labels = [], []
    for c, name in enumerate(classes):
        for entry in sorted(os.scandir(base / name), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(EXTENSIONS):
                paths.append(entry.path)
                labels.append(c)
    if not paths:
        raise DataError(f"{base} holds no images ({', '.join(EXTENSIONS)})")
    with ThreadPoolExecutor(workers) as pool:
        probes = list(pool.map(_probe, paths))
    bad = [(p, r) for p, r in zip(paths, probes) if isinstance(r, str)]
    if bad and not skip_corrupt:
        listed = "; ".join(f"{p} ({r})" for p, r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} unreadable image(s) in {base}: {listed}{more}; "
                        "remove them or set data.skip_corrupt=true to skip and count them")
    keep = [i for i, r in enumerate(probes) if not isinstance(r, str)]
    sizes = np.array([probes[i] for i in keep], dtype=np.int64).reshape(-1, 2)
    return FileSource(f"image_folder:{Path(root).name}", split, [paths[i] for i in keep],
                      np.array([labels[i] for i in keep], dtype=np.int64), sizes, len(classes), classes,
                      (output_size, output_size), skipped=[p for p, _ in bad])


@register_source("image_folder", needs_dir="the folder holding <split>/<class>/<image>")
def _read(name: str, split: str, data_dir: str | None, image_size: int, skip_corrupt: bool) -> "FileSource":
    return load_image_folder(str(data_dir), split, image_size, skip_corrupt)
