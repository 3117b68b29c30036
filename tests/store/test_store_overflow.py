"""Logits beyond float16 are refused at write time; ``teacher.dtype: float32`` stores them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store.soft_label_store import SoftLabelStore, StoreError
from tests.cli_run import fails, ok
from tests.helpers import corrupt_chunk, fmnist_config


def _teacher_config(tmp: Path, fmnist_dir: Path, **sections: dict) -> Path:
    """``tmp/c.yaml``: a one-epoch linear teacher on 300 images and one view, its store in ``tmp/store``."""
    base = {"data": {"limit": 300, "test_limit": 100},
            "views": {"kind": "pad_crop", "num_views": 1, "pad": 2, "seed": 0},
            "model": {"name": "fmnist_linear"},
            "teacher": {"checkpoint": str(tmp / "teacher"), "store": str(tmp / "store")},
            "optim": {"epochs": 1, "batch_size": 100, "eval_batch_size": 100},
            "run": {"output": str(tmp / "teacher")}}
    return fmnist_config(tmp / "c.yaml", fmnist_dir, base, **sections)


def _store(path: Path, dtype: str = "float16") -> SoftLabelStore:
    return SoftLabelStore.create(path, num_samples=4, num_views=1, num_classes=3, param_dim=2, chunk_samples=4,
                                 labels=np.zeros(4, np.int64), attrs={}, dtype=dtype)


def test_finite_float32_logits_that_overflow_float16_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    (chunk,) = list(store.chunks())
    logits = np.full((4, 3), 1e5, np.float32)  # finite in float32, inf in float16
    with pytest.raises(StoreError, match=r"reach 1e\+05 in samples 0..3, view 0: beyond the store's float16 "
                                         r"\(max 65504\); set teacher.dtype=float32"):
        store.write_chunk(chunk, logits, np.zeros((4, 2), np.float32))
    assert not store.done_mask().any()  # nothing recorded: the chunk is missing, never "verified"
    wide = _store(tmp_path / "w", "float32")
    wide.write_chunk(chunk, logits, np.zeros((4, 2), np.float32))
    assert wide.verify() == [] and wide.read_view(0)[0].max() == 1e5


def test_top_k_stores_are_float16_only(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="top_k stores: float16 only"):
        SoftLabelStore.create(tmp_path / "t", num_samples=4, num_views=1, num_classes=3, param_dim=2, chunk_samples=4,
                              labels=np.zeros(4, np.int64), attrs={}, layout="top_k", top_k=2, dtype="float32")


def test_a_teacher_with_huge_logits_cannot_write_a_complete_store(fmnist_dir: Path, tmp_path: Path) -> None:
    """Weights x 1e5 (as ``optim.lr=20000`` once made them): infer-teacher used to write a 'verified' store of inf."""
    from safetensors.torch import load_file, save_file

    path = _teacher_config(tmp_path, fmnist_dir, optim={"lr": 0.05})
    ok(["train-teacher", str(path)])
    weights = tmp_path / "teacher" / "model.safetensors"
    save_file({k: v * 1e5 for k, v in load_file(weights).items()}, weights)
    msg = fails(["infer-teacher", str(path)], "beyond the store's float16 (max 65504); set teacher.dtype=float32")
    assert len(msg) < 400
    assert SoftLabelStore.open(tmp_path / "store").attrs["status"] != "complete"
    fails(["infer-teacher", str(path)], "beyond the store's float16")  # a rerun refuses again, never "complete"
    ok(["infer-teacher", str(path), "--set", "teacher.dtype=float32", "--set", f"teacher.store={tmp_path / 'wide'}"])
    assert SoftLabelStore.open(tmp_path / "wide").attrs["status"] == "complete"


def test_repair_recomputes_a_damaged_chunk_of_a_complete_store(fmnist_dir: Path, tmp_path: Path) -> None:
    """A complete store with a damaged chunk used to get "complete; nothing to do" from infer-teacher."""
    path = _teacher_config(tmp_path, fmnist_dir, teacher={"chunk_samples": 100})
    ok(["train-teacher", str(path)])
    ok(["infer-teacher", str(path)])
    good = SoftLabelStore.open(tmp_path / "store").read_view(1)[0].copy()
    corrupt_chunk(tmp_path / "store", 1, 1, at=-3, mask=0xFF)
    assert len(SoftLabelStore.open(tmp_path / "store").verify()) == 1
    res = ok(["infer-teacher", str(path), "--repair"])
    assert res["computed_chunks"] == 1
    store = SoftLabelStore.open(tmp_path / "store")
    assert store.verify() == [] and store.is_complete
    np.testing.assert_array_equal(store.read_view(1)[0], good)
