"""Label noise as a data option: recorded in the store and the run, same for teacher and student."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.schema import load_config
from pipeline.data.sources.registry import load_run_splits, load_splits
from store.soft_label_store import SoftLabelStore
from tests.cli_run import invoke, ok
from tests.formats import write_cifar100

ROOT = Path(__file__).resolve().parents[2]




def test_noise_is_deterministic_and_logged(fmnist_dir):
    cfg = load_config(ROOT / "configs/noisy/fmnist_sym40_teacher.yaml", [f"data.data_dir={fmnist_dir}", "data.limit=0"])
    a, val, _ = load_splits(**asdict(cfg.data))
    b, _, _ = load_splits(**asdict(cfg.data))
    np.testing.assert_array_equal(a.labels, b.labels)
    clean_cfg = load_config(ROOT / "configs/noisy/fmnist_sym40_teacher.yaml",
                            [f"data.data_dir={fmnist_dir}", "data.limit=0", "data.noise_mode=none"])
    clean, _, _ = load_splits(**asdict(clean_cfg.data))
    np.testing.assert_array_equal(a.images, clean.images)
    flipped = (a.labels != clean.labels).mean()
    assert flipped == pytest.approx(0.4 * 9 / 10, abs=0.03)
    assert a.noise_rate == pytest.approx((np.concatenate([a.labels, val.labels]) != np.concatenate(
        [clean.labels, load_splits(**asdict(clean_cfg.data))[1].labels])).mean(), abs=1e-9)
    other = load_config(ROOT / "configs/noisy/fmnist_sym40_teacher.yaml",
                        [f"data.data_dir={fmnist_dir}", "data.limit=0", "data.noise_seed=1"])
    assert not np.array_equal(load_splits(**asdict(other.data))[0].labels, a.labels)


def test_noisy_pipeline_end_to_end(fmnist_dir, tmp_path):
    """Teacher on noisy labels, its store holds the noisy labels, students: noisy only and + AdaptConf."""
    common = ["--set", f"data.data_dir={fmnist_dir}", "--set", "data.limit=1000", "--set", "optim.epochs=1",
              "--set", "optim.batch_size=100", "--set", "data.test_limit=500",
              "--set", f"teacher.checkpoint={tmp_path / 'teacher'}", "--set", f"teacher.store={tmp_path / 'store'}"]
    t = ok(["train-teacher", str(ROOT / "configs/noisy/fmnist_sym40_teacher.yaml"), *common,
             "--set", f"run.output={tmp_path / 'teacher'}"])
    assert 0.3 < t["noise_rate"] < 0.42
    ok(["infer-teacher", str(ROOT / "configs/noisy/fmnist_sym40_adaptconf.yaml"), *common])
    cfg = load_config(ROOT / "configs/noisy/fmnist_sym40_adaptconf.yaml",
                      [f"data.data_dir={fmnist_dir}", "data.limit=1000"])
    splits = load_run_splits(**asdict(cfg.data))
    store = SoftLabelStore.open(tmp_path / "store")
    np.testing.assert_array_equal(store.labels(), splits.selection.labels)  # the store covers the validation part too
    np.testing.assert_array_equal(store.labels()[splits.train_rows], splits.train.labels)
    assert store.attrs["dataset"]["realized_noise_rate"] == pytest.approx(t["noise_rate"])
    for name in ("noisy_only", "adaptconf"):
        res = ok(["train-student", str(ROOT / f"configs/noisy/fmnist_sym40_{name}.yaml"), *common,
                   "--set", f"run.output={tmp_path / name}"])
        assert res["noise_rate"] == pytest.approx(t["noise_rate"])
    mismatch = invoke(["train-student", str(ROOT / "configs/noisy/fmnist_sym40_adaptconf.yaml"), *common,
                                   "--set", "data.noise_seed=5", "--set", f"run.output={tmp_path / 'x'}"])
    assert mismatch.exit_code == 2 and "dataset." in mismatch.output


def test_cifar100_asymmetric_config_runs(tmp_path):
    root = write_cifar100(tmp_path / "cifar", n_train=200, n_test=50)
    cfg = load_config(ROOT / "configs/noisy/cifar100_asym40_teacher.yaml", [f"data.data_dir={root}"])
    train, _, _ = load_splits(**asdict(cfg.data))
    clean = load_config(ROOT / "configs/noisy/cifar100_asym40_teacher.yaml",
                        [f"data.data_dir={root}", "data.noise_mode=none"])
    before = load_splits(**asdict(clean.data))[0].labels
    changed = train.labels != before
    # each class moves to the next class of its superclass (here superclass = fine // 5)
    assert (train.labels[changed] // 5 == before[changed] // 5).all()
    assert changed.mean() == pytest.approx(0.4, abs=0.1)


def test_all_noisy_configs_load():
    for p in sorted((ROOT / "configs/noisy").glob("*.yaml")):
        cfg = load_config(p)
        assert cfg.data.noise_mode in ("symmetric", "asym_cifar10", "asym_cifar100")
