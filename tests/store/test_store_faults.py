"""A store killed while being created, and a store whose attributes were edited: one line, then a clean rerun."""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

from store.soft_label_store import SoftLabelStore
from tests.cli_run import fails, ok
from tests.conftest import ROOT
from tests.helpers import run, trained_teacher

# Runs ``w2s ARGS`` in a child process that SIGKILLs itself at the POINT-th step of store creation:
# after that many arrays exist (1 = right after the group's zarr.json), or after the manifest.
KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import zarr
from store import soft_label_store as sls
point, calls = {point!r}, [0]
def step():
    calls[0] += 1
    if calls[0] == point:
        os.kill(os.getpid(), signal.SIGKILL)
make_array = zarr.Group.create_array
def create_array(self, *a, **k):
    step()
    return make_array(self, *a, **k)
zarr.Group.create_array = create_array
write_parquet = sls._write_parquet
def parquet(*a, **k):
    write_parquet(*a, **k)
    if a[1].endswith("manifest.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
sls._write_parquet = parquet if point == "manifest" else write_parquet
import cli
sys.argv = ["w2s", *{args!r}]
cli.app()
"""


@pytest.fixture(scope="module")
def teacher(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("store_faults")
    return out, trained_teacher(out, fmnist_dir, data={"limit": 256, "test_limit": 100}, teacher={"chunk_samples": 64},
                                optim={"batch_size": 64, "eval_batch_size": 100})


@pytest.mark.parametrize("point", [1, 2, 4, "manifest"])
def test_store_killed_while_being_created_is_recreated_by_the_next_run(teacher, tmp_path, point):
    _, cfg = teacher
    store = tmp_path / "store"
    args = ["infer-teacher", str(cfg), "--set", f"teacher.store={store}"]
    proc = run([sys.executable, "-c", KILLER.format(root=str(ROOT), point=point, args=args)], timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (store / "zarr.json").exists()
    # every reader names the state and the way out in one line
    line = fails(["inspect", str(store)], "interrupted while being created")
    assert "infer-teacher" in line
    # the same command again removes the unfinished store and writes a complete one
    result = ok(args)
    assert result["computed_chunks"] == SoftLabelStore.open(store).done_mask().size
    assert SoftLabelStore.open(store).is_complete
    assert not SoftLabelStore.open(store).verify()


def test_discard_unfinished_never_touches_a_real_store(teacher, tmp_path):
    out, cfg = teacher
    store = tmp_path / "store"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={store}"])
    assert not SoftLabelStore.discard_unfinished(store)
    assert SoftLabelStore.open(store).is_complete
    (tmp_path / "other").mkdir()
    assert not SoftLabelStore.discard_unfinished(tmp_path / "other")
    assert (tmp_path / "other").is_dir()


EDITS = [
    ("chunk_samples", 0, "chunk_samples"),
    ("num_samples", 1e12, "num_samples"),
    ("num_samples", 10 ** 12, "array logits has shape"),
    ("num_views", "2", "num_views"),
    ("dataset", None, "dataset"),
    ("teacher", None, "teacher"),
    ("teacher_accuracy", "null", "teacher_accuracy"),
    ("status", "done", "status"),
    ("layout", "sparse", "layout"),
]


@pytest.mark.parametrize("key,value,pattern", EDITS, ids=[f"{k}={v}" for k, v, _ in EDITS])
def test_edited_store_attributes_end_in_one_line(teacher, tmp_path, key, value, pattern):
    out, cfg = teacher
    store = tmp_path / "store"
    ok(["infer-teacher", str(cfg), "--set", f"teacher.store={store}"])
    meta = json.loads((store / "zarr.json").read_text())
    if value is None:
        del meta["attributes"][key]
    else:
        meta["attributes"][key] = None if value == "null" else value
    (store / "zarr.json").write_text(json.dumps(meta))
    line = fails(["inspect", str(store), "--verify"], pattern)
    assert len(line) < 400 and "infer-teacher" in line
    fails(["train-student", str(cfg), "--set", f"teacher.store={store}", "--set", f"run.output={tmp_path / 'run'}",
           "--set", "objective.name=kd"], f"store {store}")


def test_a_store_made_by_another_tool_without_provenance_still_opens(tmp_path):
    s = SoftLabelStore.create(tmp_path / "s", num_samples=5, num_views=1, num_classes=3, param_dim=2,
                              chunk_samples=2, labels=np.zeros(5), attrs={})
    assert SoftLabelStore.open(tmp_path / "s").num_samples == 5 and s.attrs["status"] == "partial"
    assert os.path.exists(tmp_path / "s" / "manifest.parquet")
