"""Writers of the real on-disk dataset formats, for tests that generate tiny datasets.

The real CIFAR files are Python 2 pickles whose ``str`` objects use the BINSTRING opcodes, so
they reference no global other than numpy's; Python 3's protocol 2 would instead write bytes via
``_codecs.encode``. The small pickler below writes str/bytes the Python 2 way.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes str and bytes as Python 2 ``str`` (BINSTRING opcodes)."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump_py2(obj: Any, path: Path) -> None:
    """Write ``obj`` as a Python 2 era pickle (protocol 2, byte strings)."""
    with open(path, "wb") as fh:
        Py2StylePickler(fh, protocol=2).dump(obj)


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` with random pixels and labels cycling over 100 classes."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        dump_py2({b"filenames": [b"x_%d.png" % i for i in range(n)], b"batch_label": b"batch",
                  b"fine_labels": [int(f) for f in fine], b"coarse_labels": [int(f) // 5 for f in fine],
                  b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}, d / split)
    dump_py2({b"fine_label_names": [b"fine%02d" % i for i in range(100)],
              b"coarse_label_names": [b"coarse%02d" % i for i in range(20)]}, d / "meta")
    return root
