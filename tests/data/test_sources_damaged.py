"""Truncated or damaged dataset files end, through the CLI, in one line naming the file and what to do.

A truncated ``train-images-idx3-ubyte.gz`` used to raise gzip's EOFError, which click turns into
a bare "Aborted." (exit 1). The files here are tiny ones in the real formats (gzipped idx,
Python 2 CIFAR pickles, miniImageNet pickles), damaged the way a cut-off download leaves them.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import one_line_failure
from tests.conftest import ROOT, write_idx
from tests.formats import dump_py2, write_cifar100
from tests.helpers import fmnist_config

REFETCH = "re-download or reinstall it"
CPU = ["--set", "run.device=cpu", "--set", "run.amp=none", "--set", "run.channels_last=false"]


@pytest.fixture()
def fmnist(tmp_path: Path) -> tuple[Path, Path]:
    """A Fashion-MNIST folder of 60 train and 20 test random images in gzipped idx, and a train-teacher config."""
    d = tmp_path / "fmnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        write_idx(d / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{stem}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    cfg = fmnist_config(tmp_path / "teacher.yaml", d, model={"name": "fmnist_linear"}, objective={"name": "vanilla"},
                        optim={"epochs": 1, "batch_size": 20, "eval_batch_size": 20},
                        run={"output": str(tmp_path / "teacher"), "device": "cpu"})
    return d, cfg


def test_truncated_gzip_idx(fmnist: tuple[Path, Path]) -> None:
    d, cfg = fmnist
    bad = d / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    one_line_failure(["train-teacher", str(cfg)], f"{bad} is truncated or damaged (EOFError: ", REFETCH)


def test_damaged_gzip_idx(fmnist: tuple[Path, Path]) -> None:
    """Bytes changed inside the deflate stream: zlib's error or gzip's CRC check, named as damage."""
    d, cfg = fmnist
    bad = d / "train-images-idx3-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    bad.write_bytes(bytes(data))
    one_line_failure(["train-teacher", str(cfg)], f"{bad} is truncated or damaged (", REFETCH)


def test_gz_that_is_not_gzip(fmnist: tuple[Path, Path]) -> None:
    d, cfg = fmnist
    bad = d / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.decompress(bad.read_bytes()))  # the idx bytes under a .gz name
    one_line_failure(["train-teacher", str(cfg)], f"{bad} is truncated or damaged (BadGzipFile: ", REFETCH)


def test_uncompressed_idx_shorter_than_its_header(fmnist: tuple[Path, Path]) -> None:
    d, cfg = fmnist
    gz = d / "train-images-idx3-ubyte.gz"
    bad = d / "train-images-idx3-ubyte"  # found before the .gz
    bad.write_bytes(gzip.decompress(gz.read_bytes())[:-100])
    size = 60 * 28 * 28
    one_line_failure(["train-teacher", str(cfg)],
                     f"{bad} is truncated or damaged ({size - 100} data bytes, its header says {size})", REFETCH)


def test_idx_header_cut_short(fmnist: tuple[Path, Path]) -> None:
    d, cfg = fmnist
    bad = d / "train-labels-idx1-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1, 0]))
    one_line_failure(["train-teacher", str(cfg)], f"{bad} is truncated or damaged (5 bytes, shorter than its header)",
                     REFETCH)


def test_image_and_label_files_that_do_not_match(fmnist: tuple[Path, Path]) -> None:
    d, cfg = fmnist
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(20, dtype=np.uint8))  # the test split's count
    one_line_failure(["train-teacher", str(cfg)],
                     f"{d / 'train-images-idx3-ubyte.gz'} holds images (60, 28, 28) and "
                     f"{d / 'train-labels-idx1-ubyte.gz'} labels (20,)", "re-download or reinstall them")


@pytest.fixture()
def cifar(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "cifar", n_train=40, n_test=20)


def _cifar_teacher(root: Path, tmp_path: Path) -> list[str]:
    return ["train-teacher", str(ROOT / "configs/cifar100/teacher_resnet20.yaml"), *CPU,
            "--set", f"data.data_dir={root}", "--set", f"run.output={tmp_path / 'teacher'}"]


def test_truncated_cifar_pickle(cifar: Path, tmp_path: Path) -> None:
    bad = cifar / "cifar-100-python" / "train"
    bad.write_bytes(bad.read_bytes()[:5000])
    one_line_failure(_cifar_teacher(cifar, tmp_path),
                     f"cannot read {bad}: truncated or damaged, not a valid dataset pickle (", "re-download it")


def test_cifar_batch_with_fewer_labels_than_images(cifar: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    dump_py2({b"fine_labels": [1, 2, 3], b"coarse_labels": [0, 0, 0],
              b"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8)}, cifar / "cifar-100-python" / "train")
    one_line_failure(_cifar_teacher(cifar, tmp_path), "cifar100/train in ", "5 images but 3 labels",
                     "download the python version from https://www.cs.toronto.edu/~kriz/cifar.html")


def test_truncated_mini_imagenet_pickle(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    root.mkdir()
    bad = root / "miniImageNet_category_split_train_phase_train.pickle"
    labels = np.repeat(np.arange(4), 3)
    dump_py2({"data": np.zeros((12, 84, 84, 3), dtype=np.uint8), "labels": [int(x) for x in labels]}, bad)
    bad.write_bytes(bad.read_bytes()[:3000])
    one_line_failure(["train-teacher", str(ROOT / "configs/few_shot/mini_classifier_teacher.yaml"), *CPU,
                      "--set", f"data.data_dir={root}", "--set", f"run.output={tmp_path / 'teacher'}"],
                     f"cannot read {bad}: truncated or damaged, not a valid dataset pickle (", "re-download it")
