"""Sizes checked against the data and the machine before any work, each refused in one line naming its key.

Without these, a mistyped size ends late and badly: ``run.num_threads=100000`` fails to map a shared
library, ``optim.eval_batch_size=1000000000`` dies in ``std::bad_alloc`` inside the loader, and
``views.num_views=1000000`` creates a store of millions of chunk files before it runs out of memory.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path



class SizeError(ValueError):
    """A configured size that the data or the machine cannot hold; the message is one line naming the key."""

MEMORY_SHARE = 0.5  # one batch may take at most this share of the machine's memory
MAX_STORE_CHUNKS = 1_000_000  # each chunk is ~3 files; more is beyond what file systems handle well


def machine_memory() -> int:
    """Physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def max_threads() -> int:
    """The most intra-op threads a run may ask for: four per CPU of this machine, at least 8."""
    return max(8, 4 * (os.cpu_count() or 1))


def check_threads(num_threads: int) -> None:
    if num_threads > max_threads():
        raise SizeError(f"run.num_threads={num_threads} is far more than this machine's {os.cpu_count()} CPUs; "
                          f"use at most {max_threads()} (0 lets torch choose)")


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def check_batch(key: str, batch: int, channels: int, side: int, available: int) -> None:
    """Refuse a batch whose float32 images alone would take more than half of the machine's memory."""
    need = batch * channels * side * side * 4
    if need > MEMORY_SHARE * machine_memory():
        raise SizeError(f"{key}={batch}: one batch of {channels}x{side}x{side} images needs {_gib(need)}, more "
                          f"than half of this machine's {_gib(machine_memory())}; use a smaller batch "
                          f"(the data has {available} images)")


def check_store_size(store: str, num_samples: int, num_views: int, num_classes: int, chunk_samples: int,
                     logit_bytes: int, param_dim: int, setting: int) -> None:
    """Refuse a store with too many chunks, or one larger than the free space where it goes (local paths).

    ``num_views`` counts the fixed view too; ``setting`` is ``views.num_views`` as configured, for the message."""
    blocks = -(-num_samples // max(1, min(chunk_samples, num_samples)))
    if blocks * num_views > MAX_STORE_CHUNKS:
        raise SizeError(f"views.num_views={setting}: the store would hold {blocks * num_views:,} chunks "
                          f"({blocks} blocks x {num_views} views; at most {MAX_STORE_CHUNKS:,}); use fewer views "
                          "or a larger teacher.chunk_samples")
    if "://" in store and not store.startswith("file://"):
        return
    need = num_samples * num_views * (num_classes * logit_bytes + param_dim * 4)
    where = Path(store.removeprefix("file://")).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise SizeError(f"views.num_views={setting}: the store needs up to {_gib(need)} (before compression) but "
                          f"{where} has {_gib(free)} free; use fewer views, teacher.layout=top_k, or another "
                          "teacher.store")
