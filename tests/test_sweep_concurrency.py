"""Two identical sweeps on one directory at once: a run (or the store) held by the other is waited for, not failed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_run import ok

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_twice")
    cfg = {"data": {"source": "fashion_mnist", "data_dir": str(fmnist_dir), "limit": 400, "test_limit": 200},
           "views": {"kind": "pad_crop", "num_views": 2},
           "model": {"name": "fmnist_linear"},
           "teacher": {"checkpoint": str(out / "teacher"), "store": str(out / "store"), "chunk_samples": 100},
           "objective": {"name": "vanilla"},
           "optim": {"epochs": 1, "batch_size": 50, "eval_batch_size": 200},
           "run": {"output": str(out / "teacher"), "num_threads": 1}}
    path = out / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ok(["train-teacher", str(path)])
    return path


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_two_identical_sweeps_both_succeed(config, tmp_path, parallel):
    sweep_dir = tmp_path / "sw"
    store = tmp_path / "store"  # missing: both sweeps try to make it
    cmd = [sys.executable, str(ROOT / "cli.py"), "sweep", str(config), "--grid", "objective.name=kd,adaptconf",
           "--seeds", "0", "--set", "optim.epochs=3", "--set", f"teacher.store={store}",
           "--parallel", parallel, "--output", str(sweep_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
        assert "failed" not in stderr.lower(), stderr[-3000:]
    for name in ("name=kd__seed=0", "name=adaptconf__seed=0"):
        assert (sweep_dir / name / "result.json").exists()
