"""Per-rank shard reads: ``SoftLabelStore.read_rows``, ``store.shard_reader.ShardReader`` and the chunked order."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.loader import chunked_shard_batches, chunked_shard_order, epoch_order, shard_batches
from store.shard_reader import ShardReader
from store.chunks import ReadStats, StoreError, _crc
from store.soft_label_store import SoftLabelStore
from tests.helpers import corrupt_chunk

N, VIEWS, CLASSES, PARAMS, CHUNK = 203, 3, 12, 5, 16  # 13 blocks, the last one short
GLOBAL_BATCH = 8
TIMEOUT = 30.0


def _store(path: Path, layout: str = "full", top_k: int = 0, n: int = N) -> tuple[SoftLabelStore, np.ndarray]:
    """A complete store of random logits; also returns the float32 logits ``[n, V, C]`` written."""
    s = SoftLabelStore.create(path, num_samples=n, num_views=VIEWS, num_classes=CLASSES, param_dim=PARAMS,
                              chunk_samples=CHUNK, labels=np.zeros(n), attrs={}, layout=layout, top_k=top_k)
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(n, VIEWS, CLASSES)) * 3).astype(np.float32)
    params = rng.random(size=(n, VIEWS, PARAMS)).astype(np.float32)
    for c in s.chunks():
        s.write_chunk(c, logits[c.start:c.stop, c.view], params[c.start:c.stop, c.view])
    s.finalize([0.0] * VIEWS)
    return SoftLabelStore.open(path), logits


def _global_rows(epoch: int) -> tuple[int, np.ndarray]:
    return epoch % VIEWS, epoch_order(N, epoch, seed=3, shuffle=True)


def _rank_rows(rank: int, world: int):
    def rows(epoch: int) -> tuple[int, np.ndarray]:
        view, order = _global_rows(epoch)
        return view, np.concatenate(shard_batches(order, GLOBAL_BATCH, rank, world, drop_last=True))
    return rows


def test_read_rows_equals_read_view_in_any_order(tmp_path):
    s, _ = _store(tmp_path / "s")
    full_lg, full_pr = s.read_view(1, verify=True)
    rows = np.array([200, 3, 3, 77, 16, 15, 0])
    lg, pr = s.read_rows(1, rows)
    assert lg.dtype == np.float16 and pr.dtype == np.float32
    np.testing.assert_array_equal(lg, full_lg[rows])
    np.testing.assert_array_equal(pr, full_pr[rows])
    empty_lg, empty_pr = s.read_rows(1, np.zeros(0, np.int64))
    assert empty_lg.shape == (0, CLASSES) and empty_pr.shape == (0, PARAMS)
    with pytest.raises(StoreError, match="outside its 203 samples"):
        s.read_rows(1, np.array([N]))


def test_read_rows_decodes_only_intersecting_chunks(tmp_path):
    s, _ = _store(tmp_path / "s")
    stats = ReadStats()
    s.read_rows(0, np.array([40, 33, 190, 47]), stats=stats)  # blocks 2 and 11
    assert (stats.chunks, stats.rows) == (2, 4)
    assert stats.bytes == 2 * CHUNK * (CLASSES * 2 + PARAMS * 4)


def test_union_of_rank_shards_equals_full_read(tmp_path):
    s, _ = _store(tmp_path / "s")
    for epoch in (0, 1):
        view, order = _global_rows(epoch)
        full_lg, full_pr = s.read_view(view, verify=True)
        seen = []
        for rank in range(4):
            with ShardReader(s, _rank_rows(rank, 4), epochs=2) as reader:
                shard = reader.get(epoch, timeout=TIMEOUT)
                batches = shard_batches(order, GLOBAL_BATCH, rank, 4, drop_last=True)
                for b in batches:
                    np.testing.assert_array_equal(shard.logits_of(b), full_lg[b])
                    np.testing.assert_array_equal(shard.params_of(b), full_pr[b])
                seen.append(np.concatenate(batches))
        union = np.sort(np.concatenate(seen))
        np.testing.assert_array_equal(union, np.sort(order[:(N // GLOBAL_BATCH) * GLOBAL_BATCH]))


def test_top_k_shard_equals_slice_of_full_read(tmp_path):
    s, _ = _store(tmp_path / "k", layout="top_k", top_k=4)
    view, order = _global_rows(2)
    lazy, params = s.read_view(view, verify=True)
    rows = np.concatenate(shard_batches(order, GLOBAL_BATCH, 1, 2, drop_last=True))
    dense, pr = s.read_rows(view, rows)
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, lazy[rows])
    np.testing.assert_array_equal(pr, params[rows])
    with ShardReader(s, _rank_rows(1, 2), epochs=3) as reader:
        shard = reader.get(2, timeout=TIMEOUT)
        b = rows[:GLOBAL_BATCH // 2]
        np.testing.assert_array_equal(shard.logits_of(b), lazy[b])
        assert shard.nbytes < len(rows) * (CLASSES * 4)  # held compressed, reconstructed per lookup


def test_lookups_by_training_index_through_index_to_row(tmp_path):
    s, _ = _store(tmp_path / "s")
    train_rows = np.sort(np.random.default_rng(1).choice(N, size=150, replace=False))  # a held-out split
    order = epoch_order(150, 0, seed=0, shuffle=True)
    idx = np.concatenate(shard_batches(order, GLOBAL_BATCH, 0, 2, drop_last=True))
    with ShardReader(s, lambda e: (0, train_rows[idx]), epochs=1, index_to_row=train_rows) as reader:
        shard = reader.get(0, timeout=TIMEOUT)
        full_lg, _ = s.read_view(0)
        np.testing.assert_array_equal(shard.logits_of(idx[:4]), full_lg[train_rows[idx[:4]]])
        other = np.setdiff1d(np.arange(150), idx)[:1]
        with pytest.raises(KeyError, match="not in this rank's shard"):
            shard.params_of(other)


def test_next_epoch_is_read_ahead(tmp_path):
    s, _ = _store(tmp_path / "s")
    with ShardReader(s, _rank_rows(0, 2), epochs=3) as reader:
        reader.get(0, timeout=TIMEOUT)
        assert reader.reading in (1, None)  # started as get(0) returned
        reader.get(1, timeout=TIMEOUT)
        reader.get(2, timeout=TIMEOUT)
        assert reader.reading is None  # nothing beyond the last epoch
        assert [st.ahead for st in reader.stats] == [False, True, True]
        assert [st.epoch for st in reader.stats] == [0, 1, 2]


def test_corrupt_chunk_in_read_ahead_fails_from_get(tmp_path):
    s, _ = _store(tmp_path / "s")
    corrupt_chunk(tmp_path / "s", 5, 1)  # epoch 1 reads view 1
    with ShardReader(s, _rank_rows(0, 1), epochs=2) as reader:
        reader.get(0, timeout=TIMEOUT)
        with pytest.raises(StoreError, match=r"chunk \(block 5, view 1\) samples 80..95 is corrupt"):
            reader.get(1, timeout=TIMEOUT)
    with pytest.raises(StoreError, match=r"chunk \(block 5, view 1\) samples 80..95 is corrupt"):
        s.read_rows(1, np.array([81]))
    s.read_rows(1, np.array([79, 96]))  # only chunks that are read are refused


def test_wrong_recorded_crc_fails_read_rows_and_get(tmp_path):
    s, _ = _store(tmp_path / "s")
    w = SoftLabelStore.open(tmp_path / "s", mode="r+")
    w.group["chunk_crc"][3, 2] = 12345
    with pytest.raises(StoreError, match=r"block 3, view 2\) samples 48..63 is corrupt"):
        s.read_rows(2, np.array([50]))
    s.read_rows(2, np.array([47, 64]))  # the neighbours of block 3 are fine
    s.read_rows(2, np.array([50]), verify=False)
    with pytest.raises(StoreError, match=r"block 3, view 2\) samples 48..63 is corrupt"):
        s.read_view(2, verify=True)  # the whole-view check words it the same way
    with ShardReader(s, lambda e: (2, np.arange(N)), epochs=1) as reader:
        with pytest.raises(StoreError, match="block 3, view 2"):
            reader.get(0, timeout=TIMEOUT)


def test_errors_in_rows_for_epoch_propagate_and_close_stops(tmp_path):
    s, _ = _store(tmp_path / "s")

    def rows(epoch: int) -> tuple[int, np.ndarray]:
        if epoch == 1:
            raise ValueError("no rows for epoch 1")
        return 0, np.arange(N)

    reader = ShardReader(s, rows, epochs=5)
    reader.get(0, timeout=TIMEOUT)
    with pytest.raises(ValueError, match="no rows for epoch 1"):
        reader.get(1, timeout=TIMEOUT)
    reader.get(3, timeout=TIMEOUT)  # a jump (resume) reads that epoch directly
    reader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("shard-read-")]
    with pytest.raises(RuntimeError, match="closed"):
        reader.get(4)


def test_free_consumed_bounds_memory_and_starts_read_late(tmp_path):
    s, _ = _store(tmp_path / "s")
    rank_rows = _rank_rows(0, 1)
    with ShardReader(s, rank_rows, epochs=2, free_consumed=True, read_ahead_at=0.5, segments=8) as reader:
        shard = reader.get(0, timeout=TIMEOUT)
        full = shard.nbytes
        view, order = _global_rows(0)
        full_lg, _ = s.read_view(view)
        batches = shard_batches(order, GLOBAL_BATCH, 0, 1, drop_last=True)
        for i, b in enumerate(batches):
            np.testing.assert_array_equal(shard.logits_of(b), full_lg[b])
            if i == len(batches) // 2 - 2:
                assert reader.reading is None  # not before half the epoch
        assert shard.nbytes < full / 4
        with pytest.raises(KeyError, match="already freed"):
            shard.params_of(batches[0])
        assert reader.get(1, timeout=TIMEOUT).epoch == 1
        assert reader.stats[1].ahead


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_chunked_order_gives_each_rank_its_own_chunks(world):
    n, cs = 1000, 37  # 28 chunks, the last one short
    shards = [chunked_shard_order(n, cs, 4, 0, r, world) for r in range(world)]
    assert len({len(x) for x in shards}) == 1 and len(shards[0]) == n // world
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union) == (n // world) * world
    blocks = -(-n // cs)
    for x in shards:
        assert len(np.unique(x // cs)) <= -(-blocks // world) + 1
    assert not np.array_equal(shards[0], chunked_shard_order(n, cs, 5, 0, 0, world))  # a new order each epoch
    batches = [chunked_shard_batches(n, cs, 8 * world, 4, 0, r, world) for r in range(world)]
    assert {len(b) for b in batches} == {n // (8 * world)}


def test_chunked_order_windows_keep_rows_within_their_chunks():
    rows = chunked_shard_order(640, 16, 0, 0, 0, 2, window_chunks=2)
    for start in range(0, len(rows), 32):
        assert len(np.unique(rows[start:start + 32] // 16)) <= 2


def test_non_finite_values_with_a_matching_crc_are_refused(tmp_path):
    s, _ = _store(tmp_path / "s")
    w = SoftLabelStore.open(tmp_path / "s", mode="r+")
    block = w.group["logits"][16:32, 0, :]
    block[2, 1] = np.inf
    w.group["logits"][16:32, 0, :] = block
    w.group["chunk_crc"][1, 0] = _crc(block)  # only the finite check can catch it
    with pytest.raises(StoreError, match=r"block 1, view 0\) samples 16..31 is corrupt"):
        s.read_rows(0, np.array([20]))
