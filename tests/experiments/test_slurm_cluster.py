"""submitit on the tests' own one-node SLURM cluster (tests/slurm_cluster.py): a job's result and a 2-task job.

There is no accounting database, so submitit's ``sacct`` calls fail (it warns and reads the state as UNKNOWN)
and it learns that a job is done from the result file alone: each test first waits, bounded, for squeue to
report the job finished, so that a job that dies without a result fails the test instead of hanging it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import submitit

from tests.slurm_cluster import PARTITION, SlurmCluster

# not tests.conftest's ROOT: each job imports this module, and tests.conftest imports torch
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def executor(slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> submitit.AutoExecutor:
    """A submitit executor whose sbatch/scancel reach the test cluster and whose jobs can import ``tests``."""
    for name, value in slurm.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    ex = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    ex.update_parameters(slurm_partition=PARTITION, timeout_min=5, cpus_per_task=1)
    return ex


def rank_and_size() -> tuple[int, int]:
    """This task's global rank and the number of tasks, as submitit reads them from SLURM's environment."""
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks


def test_submitit_job_returns_its_result(slurm: SlurmCluster, executor: submitit.AutoExecutor) -> None:
    job = executor.submit(math.factorial, 5)
    assert slurm.wait_finished(job.job_id) == "COMPLETED"
    assert job.result() == 120


def test_submitit_two_task_job_returns_each_rank(slurm: SlurmCluster, executor: submitit.AutoExecutor) -> None:
    executor.update_parameters(tasks_per_node=2)
    job = executor.submit(rank_and_size)
    assert slurm.wait_finished(job.job_id) == "COMPLETED"
    assert sorted(job.results()) == [(0, 2), (1, 2)]
