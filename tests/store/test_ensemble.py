"""Several stores read as one teacher (``store/ensemble.py``): the combinations' values and the checks."""
from __future__ import annotations

import numpy as np
import pytest

from store.chunks import StoreError
from store.ensemble import TeacherEnsemble, combine_logits
from store.shard_reader import ShardReader
from store.soft_label_store import SoftLabelStore

ATTRS = {"dataset": {"fingerprint": "f0", "num_samples": 10}, "view_policy": {"kind": "pad_crop", "seed": 0}}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _store(path, logits_seed: int, params_seed: int = 0, labels=None, chunk: int = 4) -> SoftLabelStore:
    s = SoftLabelStore.create(path, num_samples=10, num_views=2, num_classes=5, param_dim=3, chunk_samples=chunk,
                              labels=np.arange(10) % 5 if labels is None else labels, attrs=ATTRS)
    zs = np.random.default_rng(logits_seed)
    for c in s.chunks():  # a row's view params depend on the row, the view and params_seed only
        rows = np.arange(c.start, c.stop, dtype=np.float32)[:, None]
        s.write_chunk(c, (zs.normal(size=(c.stop - c.start, 5)) * 3).astype(np.float16),
                      np.repeat(rows + 100 * c.view + 1000 * params_seed, 3, axis=1))
    s.finalize([0.5, 0.5])
    return SoftLabelStore.open(path)


def test_combinations_are_the_averaged_weighted_and_most_confident_distributions():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(6, 5)) * 2, g.normal(size=(6, 5)) * 2
    pa, pb = _softmax(a), _softmax(b)
    np.testing.assert_allclose(_softmax(combine_logits([a, b], "mean")), (pa + pb) / 2, rtol=1e-5)
    np.testing.assert_allclose(_softmax(combine_logits([a, b], "weighted", [3, 1])), 0.75 * pa + 0.25 * pb, rtol=1e-5)
    np.testing.assert_allclose(_softmax(combine_logits([a, b], "weighted", [1, 0])), pa, rtol=1e-5)
    pick = np.where((pa.max(1) >= pb.max(1))[:, None], pa, pb)
    np.testing.assert_allclose(_softmax(combine_logits([a, b], "max_confidence")), pick, rtol=1e-5)
    assert np.isfinite(combine_logits([a * 1e4, b * 1e4], "mean")).all()  # huge logits stay finite
    with pytest.raises(ValueError, match="weighted needs 2 non-negative weights"):
        combine_logits([a, b], "weighted", [1.0])
    with pytest.raises(ValueError, match="unknown combine 'vote'"):
        combine_logits([a, b], "vote")


def test_an_ensemble_reads_like_one_full_store_through_the_shard_reader(tmp_path):
    s1, s2 = _store(tmp_path / "a", 1), _store(tmp_path / "b", 2, chunk=3)  # chunking may differ
    ens = TeacherEnsemble([s1, s2], "mean")
    rows = np.array([9, 0, 4, 4, 7])
    z, params = ens.read_rows(1, rows)
    want = np.log((_softmax(s1.read_rows(1, rows)[0].astype(np.float64))
                   + _softmax(s2.read_rows(1, rows)[0].astype(np.float64))) / 2)
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(params, s1.read_rows(1, rows)[1])
    with ShardReader(ens, lambda e: (1, rows), epochs=1) as reader:
        shard = reader.get(0)
        np.testing.assert_allclose(shard.logits_of(np.array([9, 7])), z[[0, 4]], rtol=1e-6)
    assert ens.layout == "full" and ens.num_samples == 10 and ens.path.endswith(" + " + s2.path)


def test_stores_of_other_images_or_views_are_refused(tmp_path):
    s1 = _store(tmp_path / "a", 1)
    with pytest.raises(StoreError, match="hold different labels for the same rows"):
        TeacherEnsemble([s1, _store(tmp_path / "b", 2, labels=np.zeros(10, dtype=np.int64))])
    other_views = TeacherEnsemble([s1, _store(tmp_path / "c", 2, params_seed=5)])
    with pytest.raises(StoreError, match="hold different view parameters for view 0: their teachers saw different"):
        other_views.read_rows(0, np.arange(3))
    with pytest.raises(StoreError, match="at least two stores"):
        TeacherEnsemble([s1])
