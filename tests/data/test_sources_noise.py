"""Dataset readers (CIFAR, miniImageNet, class splits), the safe unpickler, and label noise.

The fixtures write tiny datasets in the real on-disk formats. The real files are Python 2
pickles whose ``str`` objects use the BINSTRING opcodes, so they reference no global other
than numpy's; Python 3's protocol 2 would instead write bytes via ``_codecs.encode``. The
small pickler below therefore writes str/bytes the Python 2 way.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data.sources.label_noise import NOISE_MODES, asym_cifar10_map, asym_cifar100_map, inject_noise
from pipeline.data.sources.base import ArraySource, DataError
from pipeline.data.sources.cifar import (CIFAR10_MEAN, CIFAR100_STD, cifar100_coarse_labels,
                                    cifar100_coarse_of_fine, load_cifar)
from pipeline.data.sources.class_split import split_classes
from pipeline.data.sources.mini_imagenet import IMAGENET_MEAN, load_mini_imagenet
from pipeline.data.sources.safe_pickle import safe_load
from tests.formats import dump_py2


COARSE_OF_FINE = np.random.default_rng(7).permutation(np.repeat(np.arange(20), 5)).astype(np.int64)


def _cifar_pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture()
def cifar100_root(tmp_path: Path) -> Path:
    """A tiny ``cifar-100-python/`` with every fine class twice in train."""
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine_train = np.tile(np.arange(100), 2)
    data = _cifar_pixels(200, 0)
    data[1, 2 * 1024 + 5 * 32 + 7] = 201  # channel B, row 5, col 7 of sample 1
    data[1, 0 * 1024 + 0 * 32 + 31] = 13  # channel R, row 0, col 31
    for split, fine, pixels in (("train", fine_train, data), ("test", np.array([3, 99, 0]), _cifar_pixels(3, 1))):
        dump_py2({b"filenames": [b"x_%d.png" % i for i in range(len(fine))],
                  b"batch_label": b"training batch 1 of 1",
                  b"fine_labels": [int(f) for f in fine],
                  b"coarse_labels": [int(COARSE_OF_FINE[f]) for f in fine],
                  b"data": pixels}, d / split)
    dump_py2({b"fine_label_names": [b"fine%02d" % i for i in range(100)],
              b"coarse_label_names": [b"coarse%02d" % i for i in range(20)]}, d / "meta")
    return tmp_path


@pytest.fixture()
def cifar10_root(tmp_path: Path) -> Path:
    """A tiny ``cifar-10-batches-py/`` with five 4-image train batches and a test batch."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        dump_py2({b"batch_label": b"training batch %d of 5" % i, b"labels": [i, i + 1, 0, 9],
                  b"data": _cifar_pixels(4, i), b"filenames": [b"f.png"] * 4}, d / f"data_batch_{i}")
    test = _cifar_pixels(2, 9)
    test[0, 1 * 1024 + 31 * 32 + 0] = 77  # channel G, row 31, col 0
    dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": [4, 2], b"data": test,
              b"filenames": [b"t.png"] * 2}, d / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump_py2({b"num_cases_per_batch": 4, b"label_names": names, b"num_vis": 3072}, d / "batches.meta")
    return tmp_path


def _write_mini(root: Path, split: str, labels: list[int], with_catnames: bool = True) -> np.ndarray:
    data = np.random.default_rng(3).integers(0, 256, size=(len(labels), 84, 84, 3), dtype=np.uint8)
    obj: dict[str, Any] = {"data": data, "labels": labels}
    if with_catnames:
        obj["catname2label"] = {f"n{l:08d}": l for l in sorted(set(labels))}
    dump_py2(obj, root / f"miniImageNet_category_split_{split}.pickle")
    return data


class Evil:
    """Unpickling this runs ``func(arg)``: the attack the safe unpickler must stop."""

    def __init__(self, func: Any, arg: Any) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, (self.arg,)


# ---------------------------------------------------------------- CIFAR


def test_cifar100_shapes_layout_and_meta(cifar100_root: Path) -> None:
    src = load_cifar(cifar100_root, "cifar100", "train")
    assert isinstance(src, ArraySource)
    assert src.images.shape == (200, 32, 32, 3) and src.images.dtype == np.uint8
    assert src.labels.dtype == np.int64 and src.labels.tolist() == list(range(100)) * 2
    assert src.num_classes == 100 and src.class_names is not None and src.class_names[42] == "fine42"
    assert src.std == CIFAR100_STD
    assert src.images[1, 5, 7, 2] == 201 and src.images[1, 0, 31, 0] == 13
    raw = safe_load(cifar100_root / "cifar-100-python" / "train")
    assert isinstance(raw, dict) and b"data" in raw
    np.testing.assert_array_equal(src.images[4], raw[b"data"][4].reshape(3, 32, 32).transpose(1, 2, 0))
    test = load_cifar(cifar100_root / "cifar-100-python", "cifar100", "test")  # root = the folder itself
    assert test.labels.tolist() == [3, 99, 0] and len(test) == 3


def test_cifar100_coarse_labels(cifar100_root: Path) -> None:
    np.testing.assert_array_equal(cifar100_coarse_labels(cifar100_root, "test"), COARSE_OF_FINE[[3, 99, 0]])
    np.testing.assert_array_equal(cifar100_coarse_of_fine(cifar100_root), COARSE_OF_FINE)


def test_cifar10_batches(cifar10_root: Path) -> None:
    train = load_cifar(cifar10_root, "cifar10", "train")
    assert train.images.shape == (20, 32, 32, 3) and train.num_classes == 10
    assert train.labels.tolist()[:8] == [1, 2, 0, 9, 2, 3, 0, 9]
    assert train.mean == CIFAR10_MEAN and train.class_names is not None and train.class_names[9] == "truck"
    test = load_cifar(cifar10_root, "cifar10", "test")
    assert test.labels.tolist() == [4, 2] and test.images[0, 31, 0, 1] == 77


def test_str_keys_and_numpy1_global_names(tmp_path: Path) -> None:
    """Pickles with str keys, and with the other numpy major version's global names, load the same."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    buf = _cifar_pixels(2, 5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump_py2({"labels": [0, 1], "data": buf}, d / name)
    dump_py2({"label_names": [f"c{i}" for i in range(10)]}, d / "batches.meta")
    blob = (d / "test_batch").read_bytes()
    if b"numpy._core.multiarray" in blob:  # numpy 2 wrote it: rewrite to the numpy 1 name
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    else:  # numpy 1 wrote it: rewrite to the numpy 2 name
        blob = blob.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    (d / "test_batch").write_bytes(blob)
    src = load_cifar(tmp_path, "cifar10", "test")
    np.testing.assert_array_equal(src.images[1], buf[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert src.class_names == [f"c{i}" for i in range(10)]


def test_cifar_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_cifar(tmp_path / "nowhere", "cifar100", "train")
    msg = str(err.value)
    assert "nowhere" in msg and "cs.toronto.edu/~kriz/cifar.html" in msg and "\n" not in msg
    with pytest.raises(DataError, match="split"):
        load_cifar(tmp_path, "cifar100", "valid")  # type: ignore[arg-type]


def test_cifar_missing_batch(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar(cifar10_root, "cifar10", "train")


def test_truncated_pickle(cifar100_root: Path) -> None:
    path = cifar100_root / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="cannot read"):
        load_cifar(cifar100_root, "cifar100", "test")


# ---------------------------------------------------------------- safe unpickling


def test_fixture_pickles_reference_only_numpy(cifar100_root: Path) -> None:
    """Like the real Python 2 files, the fixtures name no global but numpy's array helpers."""
    blob = (cifar100_root / "cifar-100-python" / "train").read_bytes()
    globals_ = {arg for op, arg, _ in pickletools.genops(blob) if op.name in ("GLOBAL", "STACK_GLOBAL")}
    globals_ = {g.replace("numpy._core.", "numpy.core.") for g in globals_}  # numpy 2 vs 1 spelling
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


@pytest.mark.parametrize("kind", ["os.system", "subprocess", "eval"])
def test_malicious_pickle_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"os.system": Evil(os.system, f"touch {marker}"),
               "subprocess": Evil(subprocess.Popen, ["touch", str(marker)]),
               "eval": Evil(eval, f"open({str(marker)!r}, 'w')")}[kind]
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"data": payload}, protocol=2))
    with pytest.raises(DataError, match="refusing to load .*evil.pickle: pickle references"):
        safe_load(path)
    assert not marker.exists()


def test_malicious_dataset_file_refused(cifar100_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (cifar100_root / "cifar-100-python" / "train").write_bytes(pickle.dumps(Evil(os.system, f"touch {marker}")))
    with pytest.raises(DataError, match=r"posix\.system|os\.system|nt\.system"):
        load_cifar(cifar100_root, "cifar100", "train")
    mini = tmp_path / "mini"
    mini.mkdir()
    (mini / "miniImageNet_category_split_test.pickle").write_bytes(
        pickle.dumps({"data": Evil(os.system, f"touch {marker}"), "labels": [0]}, protocol=4))
    with pytest.raises(DataError, match="refusing"):
        load_mini_imagenet(mini, "test")
    assert not marker.exists()


# ---------------------------------------------------------------- miniImageNet


def test_mini_imagenet_remaps_global_ids(tmp_path: Path) -> None:
    labels = [80, 85, 80, 99, 85, 81]
    data = _write_mini(tmp_path, "test", labels)
    src = load_mini_imagenet(tmp_path, "test")
    assert src.images.shape == (6, 84, 84, 3) and src.images.dtype == np.uint8
    np.testing.assert_array_equal(src.images, data)
    assert src.labels.tolist() == [0, 2, 0, 3, 2, 1]
    assert src.class_names == ["80", "81", "85", "99"] and src.num_classes == 4
    assert src.mean == IMAGENET_MEAN
    _write_mini(tmp_path, "train_phase_train", [0, 1, 2], with_catnames=False)
    assert load_mini_imagenet(tmp_path, "train_phase_train").labels.tolist() == [0, 1, 2]


def test_mini_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="miniImageNet_category_split_val.pickle"):
        load_mini_imagenet(tmp_path / "absent", "val")
    with pytest.raises(DataError, match="train_phase_val"):
        load_mini_imagenet(tmp_path, "training")
    dump_py2({"data": np.zeros((2, 84, 84, 3), np.uint8), "labels": [1, 2, 3]},
             tmp_path / "miniImageNet_category_split_val.pickle")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load_mini_imagenet(tmp_path, "val")


# ---------------------------------------------------------------- class split


def test_split_classes() -> None:
    labels = np.array([0, 6, 3, 9, 6, 1, 7, 8, 5, 2], dtype=np.int64)
    images = np.zeros((10, 4, 4, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(10)
    src = ArraySource("fmnist", "train", images, labels, 10, (0.5,), (0.5,), [f"c{i}" for i in range(10)])
    novel = split_classes(src, [6, 7, 8, 9], "novel")
    assert novel.num_classes == 4 and novel.split == "novel"
    assert novel.labels.tolist() == [0, 3, 0, 1, 2]
    assert novel.images[:, 0, 0, 0].tolist() == [1, 3, 4, 6, 7]
    assert novel.class_names == ["c6", "c7", "c8", "c9"]
    base = split_classes(src, [5, 4, 3, 2, 1, 0], "base")  # order defines the new ids
    assert base.labels.tolist() == [5, 2, 4, 0, 3]
    with pytest.raises(DataError):
        split_classes(src, [1, 10], "x")
    with pytest.raises(DataError):
        split_classes(src, [1, 1], "x")


# ---------------------------------------------------------------- label noise


def _balanced(n: int, c: int) -> np.ndarray:
    return np.random.default_rng(0).permutation(np.arange(n) % c).astype(np.int64)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_symmetric_rate(rate: float) -> None:
    clean = _balanced(10000, 10)
    res = inject_noise(clean, 10, "symmetric", rate, seed=1)
    assert res.labels.dtype == np.int64 and res.labels.shape == clean.shape
    np.testing.assert_array_equal(res.flipped_mask, res.labels != clean)
    assert abs(res.realized_rate - rate * 9 / 10) < 0.01
    assert res.realized_rate <= rate


def test_seed_determinism() -> None:
    clean = _balanced(10000, 10)
    a = inject_noise(clean, 10, "symmetric", 0.3, seed=5)
    b = inject_noise(clean, 10, "symmetric", 0.3, seed=5)
    c = inject_noise(clean, 10, "symmetric", 0.3, seed=6)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    np.testing.assert_array_equal(clean, _balanced(10000, 10))  # input untouched
    none = inject_noise(clean, 10, "none", 0.5, seed=5)
    np.testing.assert_array_equal(none.labels, clean)
    assert none.realized_rate == 0.0


def test_asym_cifar10_map_and_exact_rate() -> None:
    assert asym_cifar10_map() == {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
    clean = _balanced(10000, 10)
    res = inject_noise(clean, 10, "asym_cifar10", 0.4, seed=0)
    for src in range(10):
        members = clean == src
        moved = res.labels[members] != src
        if src in asym_cifar10_map():
            assert moved.sum() == 400
            assert set(res.labels[members][moved].tolist()) == {asym_cifar10_map()[src]}
        else:
            assert moved.sum() == 0
    assert res.realized_rate == pytest.approx(0.4 * 5 / 10)


def test_asym_cifar100_map() -> None:
    m = asym_cifar100_map(COARSE_OF_FINE)
    assert sorted(m.tolist()) == list(range(100))  # a permutation
    for f in range(100):
        assert COARSE_OF_FINE[m[f]] == COARSE_OF_FINE[f] and m[f] != f
    for sc in range(20):
        members = np.flatnonzero(COARSE_OF_FINE == sc)
        assert [int(m[x]) for x in members] == members[1:].tolist() + [members[0]]
    assert asym_cifar100_map(np.arange(100) // 5)[:10].tolist() == [1, 2, 3, 4, 0, 6, 7, 8, 9, 5]


def test_asym_cifar100_noise() -> None:
    clean = _balanced(10000, 100)
    m = asym_cifar100_map(COARSE_OF_FINE)
    per_sample = inject_noise(clean, 100, "asym_cifar100", 0.4, seed=3, coarse_labels=COARSE_OF_FINE[clean])
    per_class = inject_noise(clean, 100, "asym_cifar100", 0.4, seed=3, coarse_labels=COARSE_OF_FINE)
    np.testing.assert_array_equal(per_sample.labels, per_class.labels)
    flipped = per_sample.flipped_mask
    np.testing.assert_array_equal(per_sample.labels[flipped], m[clean[flipped]])
    assert all(flipped[clean == c].sum() == 40 for c in range(100))
    with pytest.raises(ValueError, match="coarse"):
        inject_noise(clean, 100, "asym_cifar100", 0.4, seed=3)


def test_asym_next() -> None:
    clean = _balanced(1000, 5)
    res = inject_noise(clean, 5, "asym_next", 0.4, seed=0)
    np.testing.assert_array_equal(res.labels[res.flipped_mask], (clean[res.flipped_mask] + 1) % 5)
    assert res.realized_rate == pytest.approx(0.4)


def test_invalid_mode_and_rate() -> None:
    clean = _balanced(100, 10)
    with pytest.raises(ValueError) as err:
        inject_noise(clean, 10, "pairflip", 0.2, seed=0)
    assert all(m in str(err.value) for m in NOISE_MODES)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            inject_noise(clean, 10, "symmetric", bad, seed=0)
    with pytest.raises(ValueError, match="num_classes=10"):
        inject_noise(clean, 12, "asym_cifar10", 0.2, seed=0)
