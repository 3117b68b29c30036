"""Fresh views: supervised and online runs draw new view params every epoch, as a pure function of
(seed, epoch, sample); store runs cycle through the store's K views; seeds follow ``run.seed``."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.schema import load_config
from pipeline.data.sources.registry import load_splits
from pipeline.student.specs import view_policy
from pipeline.train_student import Trainer
from pipeline.data.views import ViewPolicy, sample_params
from tests.cli_run import fails, ok
from tests.helpers import fmnist_config


def test_fresh_policy_draws_a_new_view_each_epoch_equal_to_a_long_store():
    """Epoch e of a fresh run uses view 1 + e: the params a store with K >= epochs holds for that epoch."""
    idx = np.arange(50)
    short = ViewPolicy("pad_crop", num_views=2, pad=2, seed=7)
    fresh, long_store = short.fresh(6), ViewPolicy("pad_crop", num_views=8, pad=2, seed=7)
    drawn = [sample_params(fresh, idx, fresh.epoch_view(e), (28, 28)) for e in range(6)]
    for e in range(6):
        assert fresh.epoch_view(e) == 1 + e
        np.testing.assert_array_equal(drawn[e], sample_params(long_store, idx, long_store.epoch_view(e), (28, 28)))
    assert len({d.tobytes() for d in drawn}) == 6  # six different epochs, six different views
    # a pure function: drawing samples in another order gives the same rows
    rev = sample_params(fresh, idx[::-1], 4, (28, 28))
    np.testing.assert_array_equal(rev[::-1], drawn[3])
    # the cycling policy repeats after K epochs
    assert [short.epoch_view(e) for e in range(4)] == [1, 2, 1, 2]


def test_view_seed_follows_run_seed_unless_pinned():
    assert view_policy(load_config(None, ["run.seed=3"])).seed == 3
    assert view_policy(load_config(None, ["run.seed=3", "views.seed=1"])).seed == 1
    assert view_policy(load_config(None, ["run.seed=3"]), seed=5).seed == 5  # a store's seed
    assert view_policy(load_config(None, ["run.seed=3", "views.seed=1"]), seed=5).seed == 1


def test_validation_split_follows_run_seed_unless_pinned(fmnist_dir):
    def val(*over: str) -> str:
        cfg = load_config(None, [f"data.data_dir={fmnist_dir}", "data.val_fraction=0.1", *over])
        return load_splits(**asdict(cfg.data), run_seed=cfg.run.seed)[1].fingerprint()

    assert val("run.seed=0") != val("run.seed=1")
    assert val("run.seed=0", "data.val_seed=4") == val("run.seed=1", "data.val_seed=4")


def _cfg(tmp: Path, fmnist_dir: Path, **sections: dict) -> Path:
    base = {"data": {"limit": 400, "test_limit": 200},
            "views": {"kind": "pad_crop", "num_views": 2, "pad": 2},
            "model": {"name": "fmnist_linear"},
            "teacher": {"checkpoint": str(tmp / "teacher"), "store": str(tmp / "store"), "chunk_samples": 200},
            "optim": {"epochs": 4, "batch_size": 100, "eval_batch_size": 200},
            "run": {"output": str(tmp / "run")}}
    return fmnist_config(tmp / f"cfg{len(list(tmp.glob('cfg*.yaml')))}.yaml", fmnist_dir, base, **sections)


def _epoch_params(cfg_path: Path, role: str, *over: str) -> list[np.ndarray]:
    tr = Trainer(load_config(cfg_path, list(over)), role)
    tr.prepare()
    idx = np.arange(len(tr.train_src))
    return [tr.data.epoch_sources(e)[0](idx) for e in range(tr.epochs)]


@pytest.fixture(scope="module")
def teacher_and_stores(fmnist_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fresh")
    ok(["train-teacher", str(_cfg(tmp, fmnist_dir, optim={"epochs": 1}, run={"output": str(tmp / "teacher")}))])
    ok(["infer-teacher", str(_cfg(tmp, fmnist_dir))])  # K = 2
    ok(["infer-teacher", str(_cfg(tmp, fmnist_dir, views={"num_views": 4},
                                  teacher={"store": str(tmp / "store4")}))])  # K = epochs
    return tmp


def test_supervised_runs_draw_fresh_views(teacher_and_stores, fmnist_dir):
    tmp = teacher_and_stores
    p = _epoch_params(_cfg(tmp, fmnist_dir), "teacher")
    assert len({x.tobytes() for x in p}) == 4  # a new view every epoch, not K = 2 cycled
    policy = ViewPolicy("pad_crop", num_views=4, pad=2, seed=0)
    for e in range(4):
        np.testing.assert_array_equal(p[e], sample_params(policy, np.arange(400), 1 + e, (28, 28)))
    other = _epoch_params(_cfg(tmp, fmnist_dir), "teacher", "run.seed=1")
    assert not np.array_equal(other[0], p[0])  # another seed is a real repeat: other views
    cycled = _epoch_params(_cfg(tmp, fmnist_dir), "teacher", "views.sampling=cycle")
    np.testing.assert_array_equal(cycled[0], cycled[2])


def test_store_runs_cycle_and_online_fresh_equals_a_store_with_k_equal_epochs(teacher_and_stores, fmnist_dir):
    tmp = teacher_and_stores
    student = {"objective": {"name": "kd"}}
    stored = _epoch_params(_cfg(tmp, fmnist_dir, **student), "student")
    np.testing.assert_array_equal(stored[0], stored[2])  # K = 2 views, cycled
    online = _epoch_params(_cfg(tmp, fmnist_dir, **student), "student", "teacher.mode=online")
    long_store = _epoch_params(_cfg(tmp, fmnist_dir, views={"num_views": 4}, teacher={"store": str(tmp / "store4")},
                                    **student), "student")
    for a, b in zip(online, long_store):
        np.testing.assert_array_equal(a, b)
    online_cycled = _epoch_params(_cfg(tmp, fmnist_dir, **student), "student", "teacher.mode=online",
                                  "views.sampling=cycle")
    for a, b in zip(online_cycled, stored):
        np.testing.assert_array_equal(a, b)


def test_fresh_sampling_needs_a_view_per_epoch_in_the_store(teacher_and_stores, fmnist_dir):
    cfg = _cfg(teacher_and_stores, fmnist_dir, objective={"name": "kd"})
    fails(["train-student", str(cfg), "--set", "views.sampling=fresh"], "views.num_views >= 4")
    fails(["train-student", str(cfg), "--set", "views.sampling=sometimes"], "views.sampling must be one of")
