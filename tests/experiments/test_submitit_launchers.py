"""Sweeps through submitit (``submitit_local``): the same runs as ``basic``, preemption with requeue, status, reruns."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.cli_run import fails
from tests.helpers import DROP, descendants, one_thread_env, start, trained_teacher, w2s, w2s_cmd, wait_for

GRID = ["--grid", "objective.name=kd,adaptconf", "--seeds", "0"]
NAMES = ("name=kd__seed=0", "name=adaptconf__seed=0")


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("submitit")
    cfg = trained_teacher(out, fmnist_dir, data={"limit": 400, "test_limit": 200}, views={"pad": DROP, "seed": DROP},
                          teacher={"chunk_samples": 100}, optim={"batch_size": 25, "eval_batch_size": 200})
    assert w2s("infer-teacher", str(cfg), env=one_thread_env()).returncode == 0
    return cfg


def _sweep(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return w2s("sweep", str(config), *GRID, "--set", "optim.epochs=2", "--output", str(out), *extra,
               env=one_thread_env())


def _weights(run: Path) -> dict:
    return load_file(run / "model.safetensors")


@pytest.fixture(scope="module")
def basic(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("basic") / "sw"
    res = _sweep(config, out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_submitit_local_gives_the_basic_launchers_weights(config, basic, tmp_path):
    out = tmp_path / "sw"
    res = _sweep(config, out, "--launcher", "submitit_local", "--parallel", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in NAMES:
        record = json.loads((out / name / "launcher" / "job.json").read_text())
        assert record["launcher"] == "submitit_local" and Path(record["folder"]).is_absolute()
        assert any(p.name.endswith("_log.out") for p in (out / name / "launcher").iterdir())  # logs in <run>/launcher
        a, b = _weights(out / name), _weights(basic / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    status = w2s("sweep", "--status", str(out))
    assert status.returncode == 0 and "2 runs: 2 done" in status.stdout
    again = _sweep(config, out, "--launcher", "submitit_local")  # nothing missing: nothing submitted
    assert again.returncode == 0 and "2 done, 0 to run" in again.stderr and "submitted" not in again.stderr


def _task_pids(proc: subprocess.Popen) -> list[int]:
    """The submitit task processes (``submitit.core._submit``) under the sweep process."""
    pids = []
    for pid in descendants(proc.pid):
        try:
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_a_preempted_job_checkpoints_requeues_and_ends_with_the_same_weights(config, tmp_path):
    """SIGUSR2 (what SLURM sends before a time limit or preemption) mid-run: a checkpoint, a requeue, a resume."""
    long = ["--grid", "objective.name=kd", "--seeds", "0", "--set", "optim.epochs=60"]  # seconds: a signal lands mid-run
    ref = tmp_path / "basic"
    assert w2s("sweep", str(config), *long, "--output", str(ref), env=one_thread_env()).returncode == 0
    out = tmp_path / "sw"
    cmd = w2s_cmd("sweep", str(config), *long, "--output", str(out), "--launcher", "submitit_local")
    proc = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=one_thread_env())
    run = out / NAMES[0]
    wait_for(lambda: (run / "checkpoints" / "state.pt").exists() and bool(_task_pids(proc)), proc, interval=0.02)
    for pid in _task_pids(proc):
        subprocess.run(["kill", "-USR2", str(pid)], check=False)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    logs = "".join(p.read_text() for p in (run / "launcher").glob("*_log.*"))
    assert "stop requested: checkpoint written" in logs and "Requeued job" in logs and "resuming" in logs, logs[-3000:]
    a, b = _weights(run), _weights(ref / NAMES[0])
    assert all((a[k] == b[k]).all() for k in a)


def test_a_two_task_job_is_one_ddp_run_like_torchrun(config, tmp_path):
    """``launcher.tasks_per_node=2``: the job's tasks are the run's two ranks; the weights equal torchrun's."""
    out = tmp_path / "sw"
    res = w2s("sweep", str(config), "--grid", "objective.name=kd", "--seeds", "0", "--set", "optim.epochs=1",
              "--set", "launcher.tasks_per_node=2", "--set", "optim.batch_size=50", "--output", str(out), "--launcher", "submitit_local",
              env=one_thread_env())
    assert res.returncode == 0, res.stderr[-3000:]
    ref = tmp_path / "torchrun"
    res = w2s("train-student", str(config), "--set", "objective.name=kd", "--set", "optim.epochs=1",
              "--set", "optim.batch_size=50", "--set", f"run.output={ref}", nproc=2, env=one_thread_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (out / NAMES[0] / "launcher").glob("*_log.out"))[-1].endswith("_1_log.out")
    a, b = _weights(out / NAMES[0]), _weights(ref)
    assert all((a[k] == b[k]).all() for k in a)


def test_status_names_failed_runs_with_their_last_log_line(config, tmp_path):
    out = tmp_path / "sw"
    res = w2s("sweep", str(config), "--grid", "optim.lr=1e30", "--seeds", "0", "--set", "optim.epochs=1",
              "--output", str(out), "--launcher", "submitit_local", env=one_thread_env())
    assert res.returncode == 2 and "1 of 1 sweep runs failed" in " ".join(res.stderr.split())
    status = w2s("sweep", "--status", str(out))
    assert status.returncode == 0 and status.stdout.startswith("failed"), status.stdout
    assert "1 runs: 1 failed" in status.stdout


def test_status_and_launcher_refusals_are_one_line(config, tmp_path):
    fails(["sweep", "--status", str(tmp_path)], "no sweep.json here")
    fails(["sweep", str(config), *GRID, "--launcher", "pbs", "--output", str(tmp_path / "x")],
          "unknown --launcher 'pbs'; choose one of basic")
    fails(["sweep", str(config)], "sweep needs a CONFIG and at least one --grid")


def test_preemption_is_off_for_plain_runs():
    """Without a launcher arming it, a stop request never stops a run (a stray SIGUSR2 kills a plain run as before)."""
    from pipeline.engine import preemption
    import torch

    preemption.request_stop()
    assert not preemption._ARMED.is_set() and not preemption.stop_requested(1, torch.device("cpu"))
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
