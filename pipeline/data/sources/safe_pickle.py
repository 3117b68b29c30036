"""A restricted unpickler for dataset pickles (CIFAR python batches, miniImageNet splits).

Why: ``pickle.load`` runs whatever callable a file names, so a tampered dataset file
could execute commands. The dataset pickles we read only ever reference numpy's array
reconstruction helpers; plain containers (dict, list, str, bytes, int) are pickle opcodes,
not globals. Every other global is refused with a :class:`DataError` before anything runs.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.data.sources.base import DataError

try:  # numpy >= 2 keeps the implementation under numpy._core
    from numpy._core.multiarray import _reconstruct, scalar  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[attr-defined,no-redef]

# The only globals a dataset pickle may reference, resolved to the objects themselves so that
# loading a numpy-1 pickle under numpy 2 (or the reverse) never imports a deprecated module.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class DatasetUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals listed in ``_ALLOWED``."""

    def __init__(self, file: Any, path: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global; refuse anything else before it can be called."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refusing to load {self._path}: pickle references {module}.{name}, "
                            "which a dataset file never contains") from None

    def persistent_load(self, pid: Any) -> Any:
        """Dataset pickles hold no persistent ids; refuse them like any unknown reference."""
        raise DataError(f"refusing to load {self._path}: pickle uses a persistent id, "
                        "which a dataset file never contains")


def safe_load(path: str | Path, encoding: Literal["bytes", "latin1"] = "bytes") -> object:
    """Load one dataset pickle with :class:`DatasetUnpickler`.

    ``encoding`` decodes Python 2 ``str`` objects: ``"bytes"`` keeps them as bytes (CIFAR,
    whose keys then read ``b'data'``), ``"latin1"`` turns them into str (miniImageNet).
    Missing, unreadable or malformed files raise a one-line :class:`DataError`.
    """
    if encoding not in ("bytes", "latin1"):
        raise ValueError(f"encoding must be 'bytes' or 'latin1', got {encoding!r}")
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return DatasetUnpickler(fh, str(p), encoding).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"no file at {p}") from None
    except IsADirectoryError:
        raise DataError(f"{p} is a directory, expected a pickle file") from None
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError) as exc:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise DataError(f"cannot read {p}: truncated or damaged, not a valid dataset pickle ({detail}); "
                        "re-download it") from None
