"""Sweeps on a real one-node SLURM cluster (tests/slurm_cluster.py) through ``--launcher submitit_slurm``.

A 2-point x 2-seed sweep, ``--status``, a rerun that submits nothing, a sweep killed while its job runs (the
rerun waits for that job instead of submitting it again), and a preemption (``scancel --signal=USR2``, what
SLURM sends before a time limit) that must end with the weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import DROP, kill, one_thread_env, start, trained_teacher, w2s, w2s_cmd, wait_for

JOB = ["--set", "launcher.partition=debug", "--set", "launcher.cpus_per_task=1", "--set", "launcher.mem_gb=0.25",
       "--set", "launcher.timeout_min=60", "--launcher", "submitit_slurm"]  # >= 50 min: submitit's timed-out rule
KD = "name=kd__seed=0"
LONG = "optim.epochs=60"  # a few seconds of the linear student: long enough for a signal to land mid-run


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm_sweep")
    cfg = trained_teacher(out, fmnist_dir, data={"limit": 400, "test_limit": 200}, views={"pad": DROP, "seed": DROP},
                          teacher={"chunk_samples": 100}, optim={"batch_size": 25, "eval_batch_size": 200})
    assert w2s("infer-teacher", str(cfg), env=one_thread_env()).returncode == 0
    return cfg


@pytest.fixture
def env(slurm) -> dict[str, str]:
    return {**one_thread_env(), **slurm.env}


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> Path:
    """The long kd run with the basic launcher: what a preempted SLURM job must reproduce."""
    out = tmp_path_factory.mktemp("basic") / "sw"
    res = w2s("sweep", str(config), "--grid", "objective.name=kd", "--seeds", "0", "--set", LONG,
              "--output", str(out), env=one_thread_env())
    assert res.returncode == 0, res.stderr[-3000:]
    return out / KD


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def test_a_two_by_two_sweep_on_slurm(config, env, tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", str(config), "--grid", "objective.name=kd,adaptconf", "--seeds", "0,1",
            "--set", "optim.epochs=1", "--output", str(out), *JOB]
    res = w2s(*args, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p for p in out.iterdir() if (p / "sweep.log").exists() or (p / "launcher").is_dir()]
    assert len(runs) == 4 and all((p / "result.json").exists() for p in runs)
    ids = {json.loads((p / "launcher" / "job.json").read_text())["job_id"] for p in runs}
    assert len(ids) == 4  # one SLURM job per run
    status = w2s("sweep", "--status", str(out), env=env)
    assert status.returncode == 0 and "4 runs: 4 done" in status.stdout, status.stdout
    again = w2s(*args, env=env)
    assert again.returncode == 0 and "4 done, 0 to run" in again.stderr and "submitted" not in again.stderr


def test_a_rerun_waits_for_the_job_still_running_instead_of_submitting_it_again(config, env, tmp_path, slurm):
    out = tmp_path / "sw"
    args = ["sweep", str(config), "--grid", "objective.name=kd", "--seeds", "0", "--set", "optim.epochs=400",
            "--output", str(out), *JOB]
    first = start(w2s_cmd(*args), env=env)
    record = out / KD / "launcher" / "job.json"
    wait_for(lambda: record.exists() and (out / KD / "config.yaml").exists(), first, interval=0.1)
    kill(first)  # the sweep process dies; its SLURM job runs on
    job_id = json.loads(record.read_text())["job_id"]
    assert slurm.job_state(job_id) == "RUNNING"
    status = w2s("sweep", "--status", str(out), env=env)
    assert status.stdout.startswith("running") and f"job {job_id}" in status.stdout, status.stdout
    res = w2s(*args, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"waiting for {KD}: job {job_id} is still with the scheduler" in res.stderr and "submitted" not in res.stderr
    assert json.loads(record.read_text())["job_id"] == job_id and (out / KD / "result.json").exists()


def test_a_preempted_slurm_job_requeues_and_ends_with_the_uninterrupted_weights(config, env, reference, tmp_path, slurm):
    out = tmp_path / "sw"
    cmd = w2s_cmd("sweep", str(config), "--grid", "objective.name=kd", "--seeds", "0", "--set", LONG,
                  "--output", str(out), *JOB)
    proc = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    run = out / KD
    wait_for(lambda: (run / "checkpoints" / "state.pt").exists(), proc, interval=0.02)
    job_id = json.loads((run / "launcher" / "job.json").read_text())["job_id"]
    assert slurm.run("scancel", "--signal=USR2", job_id).returncode == 0
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    logs = "".join(p.read_text() for p in (run / "launcher").glob("*_log.*"))
    assert "stop requested: checkpoint written" in logs and "Requeued job" in logs, logs[-3000:]
    assert "resuming" in logs, logs[-3000:]
    assert _same_weights(run, reference)


def test_a_job_the_scheduler_refuses_is_one_line(config, env, tmp_path):
    res = w2s("sweep", str(config), "--grid", "objective.name=kd", "--seeds", "0", "--output", str(tmp_path / "sw"),
              *JOB, "--set", "launcher.mem_gb=100", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = " ".join(res.stderr.split())
    assert "submitit_slurm: the scheduler refused the jobs (sbatch: error: Batch job submission failed" in line, line
    assert "change the config's launcher section" in line


def test_a_job_array_with_a_parallelism_limit(config, env, tmp_path, slurm):
    out = tmp_path / "sw"
    res = w2s("sweep", str(config), "--grid", "objective.name=kd,adaptconf", "--seeds", "0", "--set", "optim.epochs=1",
              "--output", str(out), *JOB, "--set", "launcher.array_parallelism=1", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads((out / n / "launcher" / "job.json").read_text()) for n in (KD, "name=adaptconf__seed=0")]
    array = {r["job_id"].split("_")[0] for r in records}
    assert len(array) == 1 and [r["job_id"].split("_")[1] for r in records] == ["0", "1"]  # one array, two tasks
    assert all(Path(r["folder"]).parent == out / "launcher" for r in records)  # logs under the sweep's launcher/
    assert all((out / n / "result.json").exists() for n in (KD, "name=adaptconf__seed=0"))
