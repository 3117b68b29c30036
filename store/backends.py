"""Store backends by name and URL scheme: the functions here pick the implementation of a store's path.

:class:`~store.soft_label_store.SoftLabelStore` (Zarr v3 through fsspec) is the default: local paths
and every fsspec URL. Another kind of store registers for its URL schemes, or is asked for by name::

    @register_store_backend
    class MyStore:
        name = "mine"
        schemes = ("mydb",)
        ...  # the StoreBackend class methods; its instances satisfy store.protocol.Store

The pipeline opens, creates and locks stores only through these functions.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from store.chunks import StoreError
from store.protocol import Store, StoreBackend
from store.soft_label_store import SoftLabelStore

DEFAULT_BACKEND = SoftLabelStore.name
STORE_BACKENDS: dict[str, StoreBackend] = {}


def register_store_backend(cls: type) -> type:
    """Class decorator: make a backend available by its ``name`` and for its URL ``schemes``."""
    STORE_BACKENDS[cls.name] = cls  # type: ignore[assignment]
    return cls


register_store_backend(SoftLabelStore)


def store_backend(path: str | Path, backend: str | None = None) -> StoreBackend:
    """The backend named ``backend``, else the one registered for ``path``'s URL scheme, else the default."""
    if backend is not None:
        if backend not in STORE_BACKENDS:
            raise StoreError(f"unknown store backend {backend!r}; registered: {', '.join(STORE_BACKENDS)}")
        return STORE_BACKENDS[backend]
    path = str(path)
    scheme = path.split("://", 1)[0] if "://" in path else ""
    for b in STORE_BACKENDS.values():
        if scheme in b.schemes:
            return b
    return STORE_BACKENDS[DEFAULT_BACKEND]


def open_store(path: str | Path, mode: str = "r", backend: str | None = None) -> Store:
    """Open the existing store at ``path`` (a :class:`StoreError` if there is none)."""
    return store_backend(path, backend).open(path, mode)


def create_store(path: str | Path, backend: str | None = None, **kwargs: Any) -> Store:
    """Create an empty store at ``path``; ``kwargs`` as :meth:`StoreBackend.create`."""
    return store_backend(path, backend).create(path, **kwargs)


def store_lock(path: str | Path, backend: str | None = None) -> AbstractContextManager[Any]:
    """The writer lock of the store at ``path``, taken before the store is opened or created."""
    return store_backend(path, backend).lock_at(path)


def store_lock_held(path: str | Path, backend: str | None = None) -> bool:
    """Whether a live writer holds the store's lock now (what a waiting process polls)."""
    return store_backend(path, backend).is_locked(path)
