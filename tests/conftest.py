"""Shared fixtures: a small real Fashion-MNIST folder in idx format, and tiny configs."""
from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import pipeline.scenarios  # noqa: F401  (registers the built-in scenarios, as the CLI does)
from pipeline.data.sources.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable, slurm_cluster

ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped idx file (the format Fashion-MNIST ships in)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 real training and 1,000 real test images of Fashion-MNIST, as idx files."""
    if not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; .ci/run does this)")
    d = tmp_path_factory.mktemp("fmnist")
    for split, n, stem in (("train", 2000, "train"), ("test", 1000, "t10k")):
        src = load_fashion_mnist(split)
        write_idx(d / f"{stem}-images-idx3-ubyte.gz", src.images[:n, :, :, 0])
        write_idx(d / f"{stem}-labels-idx1-ubyte.gz", src.labels[:n].astype(np.uint8))
    return d


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster run by the tests themselves (tests/slurm_cluster.py), or a skip saying why not."""
    try:
        with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
            yield cluster
    except SlurmUnavailable as e:
        pytest.skip(str(e))
