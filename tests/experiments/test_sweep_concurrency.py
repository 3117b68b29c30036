"""Two identical sweeps on one directory at once: a run (or the store) held by the other is waited for, not failed."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import DROP, one_thread_env, start, trained_teacher, w2s_cmd


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_twice")
    return trained_teacher(out, fmnist_dir, data={"limit": 400, "test_limit": 200}, views={"pad": DROP, "seed": DROP},
                           teacher={"chunk_samples": 100}, optim={"batch_size": 50, "eval_batch_size": 200})


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_two_identical_sweeps_both_succeed(config, tmp_path, parallel):
    sweep_dir = tmp_path / "sw"
    store = tmp_path / "store"  # missing: both sweeps try to make it
    cmd = w2s_cmd("sweep", str(config), "--grid", "objective.name=kd,adaptconf", "--seeds", "0",
                  "--set", "optim.epochs=3", "--set", f"teacher.store={store}",
                  "--parallel", parallel, "--output", str(sweep_dir))
    procs = [start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
        assert "failed" not in stderr.lower(), stderr[-3000:]
    for name in ("name=kd__seed=0", "name=adaptconf__seed=0"):
        assert (sweep_dir / name / "result.json").exists()
