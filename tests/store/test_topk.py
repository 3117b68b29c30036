"""The top-k layout (store/topk.py): what its docstring calls exact is checked exactly."""
from __future__ import annotations

import numpy as np
import pytest

from store.topk import bytes_per_sample_view, compress, index_dtype, reconstruct

C = 1000


def _logits(rng: np.random.Generator, shape: tuple[int, ...], c: int = C) -> np.ndarray:
    """Classifier-like float32 logits: Gaussian noise (std 2) plus one peaked class per row."""
    z = rng.normal(0.0, 2.0, size=(*shape, c)).astype(np.float32)
    peak = rng.integers(0, c, size=shape)
    np.put_along_axis(z, peak[..., None], (z.max(axis=-1) + rng.normal(2.0, 3.0, size=shape))[..., None], axis=-1)
    return z


def _log_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    x = np.asarray(z, dtype=np.float64) / t
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return _logits(np.random.default_rng(0), (256, 3))


@pytest.mark.parametrize("k", [1, 5, 10, 100])
def test_shapes_and_dtypes(batch: np.ndarray, k: int) -> None:
    rec = compress(batch, k)
    assert rec["values"].shape == (256, 3, k) and rec["values"].dtype == np.float16
    assert rec["indices"].shape == (256, 3, k) and rec["indices"].dtype == np.int16
    assert rec["tail_lse"].shape == (256, 3) and rec["tail_lse"].dtype == np.float32
    out = reconstruct(**rec, num_classes=C)
    assert out.shape == batch.shape and out.dtype == np.float32
    # values are the float16 logits at the stored classes, in descending order
    h = batch.astype(np.float16)
    np.testing.assert_array_equal(np.take_along_axis(h, rec["indices"].astype(np.intp), -1), rec["values"])
    assert (np.diff(rec["values"].astype(np.float32), axis=-1) <= 0).all()


def test_single_row_and_index_dtype() -> None:
    z = _logits(np.random.default_rng(1), ())
    rec = compress(z, 7)
    assert rec["values"].shape == (7,) and rec["tail_lse"].shape == ()
    assert reconstruct(**rec, num_classes=C).shape == (C,)
    assert index_dtype(1000) == np.int16 and index_dtype(32767) == np.int16 and index_dtype(32768) == np.int32
    wide = compress(np.random.default_rng(2).normal(size=(2, 40000)).astype(np.float32), 3)
    assert wide["indices"].dtype == np.int32


@pytest.mark.parametrize("k", [1, 5, 50])
def test_argmax_preserved(batch: np.ndarray, k: int) -> None:
    out = reconstruct(**compress(batch, k), num_classes=C)
    np.testing.assert_array_equal(out.argmax(-1), batch.astype(np.float16).argmax(-1))
    # against the float32 teacher it differs only where float16 rounding makes two classes tie (the full layout too)
    h = batch.astype(np.float16)
    differs = out.argmax(-1) != batch.argmax(-1)
    tie = np.take_along_axis(h, batch.argmax(-1)[..., None], -1)[..., 0] == h.max(-1)
    assert (tie[differs]).all()


def test_argmax_preserved_with_ties() -> None:
    """Ties break toward the lower class index, as argmax does; a flat tail cannot steal the argmax."""
    z = np.zeros((4, 8), dtype=np.float32)
    z[0, [2, 5]] = 3.0           # tie at the top: argmax is 2
    z[1, :] = 1.0                # everything tied: argmax is 0
    z[2, 6] = 1.0                # top class after a flat tail of lower indices
    z[3, [1, 3, 7]] = [2.0, 2.0, 5.0]
    for k in range(1, 9):
        rec = compress(z, k)
        out = reconstruct(**rec, num_classes=8)
        np.testing.assert_array_equal(out.argmax(-1), z.argmax(-1))
        np.testing.assert_array_equal(rec["indices"][:, 0], z.argmax(-1))
    np.testing.assert_array_equal(compress(z, 2)["indices"][0], [2, 5])


@pytest.mark.parametrize("k", [1, 10, 100])
def test_topk_probabilities_exact_at_t1(batch: np.ndarray, k: int) -> None:
    rec = compress(batch, k)
    idx = rec["indices"].astype(np.intp)
    p_rec = np.exp(np.take_along_axis(_log_softmax(reconstruct(**rec, num_classes=C)), idx, -1))
    # against the full float16 layout: equal up to the float32 rounding of tail_lse
    p16 = np.exp(np.take_along_axis(_log_softmax(batch.astype(np.float16)), idx, -1))
    np.testing.assert_allclose(p_rec, p16, rtol=1e-5, atol=0)
    # against the float32 teacher: within the float16 rounding of the logits (|dz| <= e => |dp/p| <= e^{2e} - 1)
    eps = float(np.abs(batch.astype(np.float16).astype(np.float64) - batch).max())
    p32 = np.exp(np.take_along_axis(_log_softmax(batch), idx, -1))
    np.testing.assert_allclose(p_rec, p32, rtol=np.expm1(2 * eps) + 1e-6, atol=0)


@pytest.mark.parametrize("k", [1, 10, 100, 999])
def test_tail_mass_preserved_at_t1(batch: np.ndarray, k: int) -> None:
    rec = compress(batch, k)
    mask = np.zeros(batch.shape, dtype=bool)
    np.put_along_axis(mask, rec["indices"].astype(np.intp), True, -1)
    true_tail = np.where(mask, 0.0, np.exp(_log_softmax(batch.astype(np.float16)))).sum(-1)
    rec_tail = np.where(mask, 0.0, np.exp(_log_softmax(reconstruct(**rec, num_classes=C)))).sum(-1)
    np.testing.assert_allclose(rec_tail, true_tail, rtol=1e-3, atol=0)
    # the direct definition of tail_lse
    lse = np.log(np.where(mask, 0.0, np.exp(batch.astype(np.float16).astype(np.float64))).sum(-1))
    np.testing.assert_allclose(rec["tail_lse"], lse, rtol=1e-6)


def test_tail_mass_bound_at_other_temperatures(batch: np.ndarray) -> None:
    """Power-mean inequality: the flat tail over-weights the tail for T > 1 and under-weights it for T < 1."""
    rec = compress(batch, 10)
    mask = np.zeros(batch.shape, dtype=bool)
    np.put_along_axis(mask, rec["indices"].astype(np.intp), True, -1)
    out = reconstruct(**rec, num_classes=C)
    for t, sign in ((2.0, 1), (4.0, 1), (0.5, -1)):
        true_tail = np.where(mask, 0.0, np.exp(_log_softmax(batch.astype(np.float16), t))).sum(-1)
        rec_tail = np.where(mask, 0.0, np.exp(_log_softmax(out, t))).sum(-1)
        assert (sign * (rec_tail - true_tail) >= -1e-9 * true_tail).all()


def test_k_equals_c_is_lossless(batch: np.ndarray) -> None:
    rec = compress(batch, C)
    assert np.isneginf(rec["tail_lse"]).all()
    out = reconstruct(**rec, num_classes=C)
    np.testing.assert_array_equal(out, batch.astype(np.float16).astype(np.float32))


def test_float16_input_is_taken_as_is(batch: np.ndarray) -> None:
    h = batch.astype(np.float16)
    a, b = compress(h, 10), compress(batch, 10)
    for name in ("values", "indices", "tail_lse"):
        np.testing.assert_array_equal(a[name], b[name])


def test_bytes_per_sample_view() -> None:
    assert bytes_per_sample_view(1000, layout="full") == 2000                  # 1000 x float16
    assert bytes_per_sample_view(1000, 10, "top_k") == 44                      # 10 x 2 + 10 x 2 + 4
    assert bytes_per_sample_view(40000, 10, "top_k") == 10 * 2 + 10 * 4 + 4    # int32 indices
    with pytest.raises(ValueError):
        bytes_per_sample_view(1000, None, "top_k")
    with pytest.raises(ValueError):
        bytes_per_sample_view(1000, 10, "sparse")  # type: ignore[arg-type]


def test_bad_input_refused(batch: np.ndarray) -> None:
    with pytest.raises(ValueError):
        compress(batch, 0)
    with pytest.raises(ValueError):
        compress(batch, C + 1)
    with pytest.raises(ValueError):
        compress(np.array([1.0, np.nan, 0.0]), 1)
    with pytest.raises(ValueError):
        compress(np.array([1e6, 0.0]), 1)  # overflows float16
    rec = compress(batch[:2, 0], 3)
    with pytest.raises(ValueError):
        reconstruct(rec["values"], rec["indices"], rec["tail_lse"], num_classes=2)
    bad = rec["indices"].copy()
    bad[0, 1] = bad[0, 0]
    with pytest.raises(ValueError):
        reconstruct(rec["values"], bad, rec["tail_lse"], num_classes=C)
    with pytest.raises(ValueError):
        reconstruct(rec["values"], rec["indices"], rec["tail_lse"][:1], num_classes=C)


@pytest.mark.parametrize("c", [1000, 70000])  # uint32 and uint64 selection keys
def test_selection_matches_stable_sort(c: int) -> None:
    """The selected classes are the first k of a stable descending sort of the float16 logits."""
    z = np.round(np.random.default_rng(3).normal(0.0, 2.0, size=(4, c)), 1).astype(np.float32)  # many ties
    z[0, :5] = -0.0
    h = z.astype(np.float16)
    want = np.argsort(-h.astype(np.float32) + 0.0, axis=-1, kind="stable")[:, :17]
    rec = compress(z, 17)
    np.testing.assert_array_equal(rec["indices"], want)
    assert rec["indices"].dtype == (np.int16 if c <= 32767 else np.int32)
