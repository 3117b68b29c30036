"""``teacher.stores``: a student learns from several teachers' stores at once, each checked against the run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config.schema import load_config
from pipeline.train_student import Trainer
from store.ensemble import TeacherEnsemble, combine_logits
from store.soft_label_store import SoftLabelStore
from tests.cli_run import fails, ok
from tests.helpers import fmnist_config

VIEWS = {"kind": "pad_crop", "num_views": 2, "pad": 2, "seed": 0}


@pytest.fixture(scope="module")
def two_teachers(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A linear and an MLP teacher, each with its store of the same images and views (CLI)."""
    out = tmp_path_factory.mktemp("two_teachers")
    paths = {}
    for name in ("fmnist_linear", "fmnist_mlp"):
        cfg = fmnist_config(out / f"{name}.yaml", fmnist_dir, views=VIEWS, model={"name": name},
                            objective={"name": "vanilla"}, optim={"epochs": 1},
                            teacher={"checkpoint": str(out / name), "store": str(out / f"{name}_store"),
                                     "chunk_samples": 512},
                            run={"output": str(out / name), "num_threads": 1})
        ok(["train-teacher", str(cfg)])
        ok(["infer-teacher", str(cfg)])
        paths[name] = out / f"{name}_store"
    paths["out"] = out
    return paths


def _student(two_teachers: dict[str, Path], fmnist_dir: Path, name: str, **teacher) -> Path:
    out = two_teachers["out"]
    stores = [str(two_teachers["fmnist_linear"]), str(two_teachers["fmnist_mlp"])]
    return fmnist_config(out / f"{name}.yaml", fmnist_dir, views=VIEWS, model={"name": "fmnist_cnn", "kwargs": {"width": 4}},
                         objective={"name": "kd", "gt_weight": 0.0},
                         teacher={"stores": stores, **teacher}, optim={"epochs": 1, "batch_size": 100},
                         run={"output": str(out / name), "num_threads": 1})


@pytest.mark.parametrize("combine", ["mean", "max_confidence"])
def test_a_student_trains_from_two_stores(two_teachers, fmnist_dir, combine):
    cfg_path = _student(two_teachers, fmnist_dir, f"student_{combine}", combine=combine)
    res = ok(["train-student", str(cfg_path)])
    assert res["teacher_mode"] == "store" and 0 <= res["test_acc"] <= 1
    # what the trainer replays: each row's combination of the two teachers' logits
    trainer = Trainer(load_config(cfg_path), role="student")
    trainer.prepare()
    assert isinstance(trainer.teacher.store, TeacherEnsemble)
    a = SoftLabelStore.open(two_teachers["fmnist_linear"]).read_view(1)[0].astype(np.float32)
    b = SoftLabelStore.open(two_teachers["fmnist_mlp"]).read_view(1)[0].astype(np.float32)
    combined = combine_logits([a, b], combine)
    rows = np.arange(0, len(a), 7)
    np.testing.assert_allclose(trainer.teacher.store.read_rows(1, rows)[0], combined[rows], rtol=1e-6)
    assert (combined.argmax(1) != a.argmax(1)).any()  # not just the first teacher


def test_stores_are_checked_as_a_single_store_is(two_teachers, fmnist_dir):
    cfg = str(_student(two_teachers, fmnist_dir, "bad"))
    out = two_teachers["out"]
    fails(["train-student", cfg, "--set", f"teacher.store={two_teachers['fmnist_linear']}"],
          "teacher.store and teacher.stores are both set")
    fails(["train-student", cfg, "--set", f"teacher.checkpoint={out / 'fmnist_linear'}"],
          "teacher.stores combines several teachers, so teacher.checkpoint")
    fails(["train-student", cfg, "--set", f"teacher.stores=[{two_teachers['fmnist_linear']}]"],
          "teacher.stores needs at least two stores")
    fails(["train-student", cfg, "--set", "teacher.combine=weighted", "--set", "teacher.weights=[1.0]"],
          "weighted needs 2 non-negative weights")
    fails(["train-student", cfg, "--set", "views.seed=1"], "does not match this run: view_policy.seed")
