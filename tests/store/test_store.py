"""Store round trip, chunk-level resume bookkeeping, integrity checks and attribute matching."""
import numpy as np
import pytest

from store.soft_label_store import SoftLabelStore, StoreError
from tests.helpers import corrupt_chunk

ATTRS = {"teacher": {"model": "m", "sha256": "abc"}, "dataset": {"fingerprint": "f0", "num_samples": 10},
         "view_policy": {"kind": "pad_crop", "num_views": 2, "seed": 0}}


def _create(path, n=10, chunk=4):
    return SoftLabelStore.create(path, num_samples=n, num_views=3, num_classes=5, param_dim=5, chunk_samples=chunk,
                                 labels=np.arange(n) % 5, attrs=ATTRS)


def _fill(store, rng):
    written = {}
    for c in store.chunks():
        lg = rng.normal(size=(c.stop - c.start, 5)).astype(np.float16)
        pr = rng.random(size=(c.stop - c.start, 5)).astype(np.float32)
        store.write_chunk(c, lg, pr)
        written[(c.block, c.view)] = (lg, pr)
    return written


def test_round_trip(tmp_path):
    s = _create(tmp_path / "s")
    written = _fill(s, np.random.default_rng(0))
    s.finalize([0.5, 0.4, 0.3])
    r = SoftLabelStore.open(tmp_path / "s")
    assert r.is_complete and r.num_samples == 10 and r.num_views == 3
    lg, pr = r.read_view(1)
    np.testing.assert_array_equal(lg[4:8], written[(1, 1)][0])
    np.testing.assert_array_equal(pr[8:], written[(2, 1)][1])
    sub_lg, _ = r.read_view(2, np.array([9, 0]))
    np.testing.assert_array_equal(sub_lg[0], written[(2, 2)][0][1])
    np.testing.assert_array_equal(r.labels(), np.arange(10) % 5)
    assert r.attrs["teacher_accuracy"] == [0.5, 0.4, 0.3]
    assert r.verify() == []


def test_resume_lists_only_missing_chunks(tmp_path):
    s = _create(tmp_path / "s")
    chunks = list(s.chunks())
    assert len(chunks) == 9  # 3 blocks x 3 views
    for c in chunks[:4]:
        s.write_chunk(c, np.zeros((c.stop - c.start, 5)), np.zeros((c.stop - c.start, 5)))
    again = SoftLabelStore.open(tmp_path / "s", mode="r+")
    assert again.missing_chunks() == chunks[4:]
    with pytest.raises(StoreError, match="chunks still missing"):
        again.finalize([0.0] * 3)


def test_partial_store_refused_for_training(tmp_path):
    s = _create(tmp_path / "s")
    with pytest.raises(StoreError, match="partial"):
        s.check_matches({"dataset": {"fingerprint": "f0"}})


def test_mismatch_names_the_field(tmp_path):
    s = _create(tmp_path / "s")
    _fill(s, np.random.default_rng(0))
    s.finalize([0.0] * 3)
    s.check_matches({"dataset": {"fingerprint": "f0"}, "view_policy": {"seed": 0}})
    with pytest.raises(StoreError, match=r"view_policy\.seed is 0 in the store but 1 here"):
        s.check_matches({"view_policy": {"seed": 1}})
    with pytest.raises(StoreError, match=r"dataset\.fingerprint"):
        s.check_matches({"dataset": {"fingerprint": "other"}})


def test_verify_names_a_corrupt_chunk(tmp_path):
    s = _create(tmp_path / "s")
    _fill(s, np.random.default_rng(1))
    s.finalize([0.0] * 3)
    corrupt_chunk(tmp_path / "s", 1, 2, at=-3, mask=0xFF)
    problems = SoftLabelStore.open(tmp_path / "s").verify()
    assert len(problems) == 1 and "block 1, view 2" in problems[0]


def test_refuses_empty_dataset_and_non_finite_logits(tmp_path):
    with pytest.raises(StoreError, match="empty"):
        _create(tmp_path / "e", n=0)
    s = _create(tmp_path / "s")
    c = next(iter(s.chunks()))
    bad = np.zeros((c.stop - c.start, 5))
    bad[0, 0] = np.nan
    with pytest.raises(StoreError, match="non-finite"):
        s.write_chunk(c, bad, np.zeros_like(bad))
    assert s.done_mask().sum() == 0


def test_open_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        SoftLabelStore.open(tmp_path / "nothing")


def test_store_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, store.soft_label_store, store.inspect; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))


def test_top_k_layout_round_trip(tmp_path):
    s = SoftLabelStore.create(tmp_path / "k", num_samples=10, num_views=2, num_classes=50, param_dim=5,
                              chunk_samples=4, labels=np.zeros(10), attrs=ATTRS, layout="top_k", top_k=5)
    rng = np.random.default_rng(3)
    full = rng.normal(size=(10, 2, 50)).astype(np.float32) * 3
    for c in s.chunks():
        s.write_chunk(c, full[c.start:c.stop, c.view], np.zeros((c.stop - c.start, 5)))
    s.finalize([0.0, 0.0])
    r = SoftLabelStore.open(tmp_path / "k")
    assert r.layout == "top_k" and "topk_values" in r.group and "logits" not in r.group
    lazy, _ = r.read_view(1)
    np.testing.assert_array_equal(lazy.argmax(1), full[:, 1].astype(np.float16).argmax(1))
    rows = lazy[np.array([2, 7])]
    assert rows.shape == (2, 50)
    np.testing.assert_array_equal(rows, r.read_view(1, np.array([2, 7]))[0])
    top = np.sort(full[7, 1].astype(np.float16).astype(np.float32))[-5:]
    np.testing.assert_allclose(np.sort(rows[1])[-5:], top)
    assert r.verify() == []
    with pytest.raises(StoreError, match="top_k must be in 1..50"):
        SoftLabelStore.create(tmp_path / "bad", num_samples=10, num_views=2, num_classes=50, param_dim=5,
                              chunk_samples=4, labels=np.zeros(10), attrs=ATTRS, layout="top_k", top_k=0)
