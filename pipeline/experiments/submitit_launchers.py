"""Sweep runs as submitit jobs: ``submitit_slurm`` on a SLURM cluster, ``submitit_local`` as local processes.

Both submit the same :class:`RunJob` (one resumed student run), with the executor parameters of the
config's ``launcher`` section (Hydra's names, :class:`~pipeline.config.schema.LauncherConfig`):

- **DDP.** A job of ``nodes`` x ``tasks_per_node`` tasks is one run whose tasks are its ranks: each
  task exports the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``, through ``submitit.helpers.TorchDistributedEnvironment``) before the run starts.
- **Preemption and time limits.** SLURM sends SIGUSR2 ``signal_delay_s`` before the job's end (and a
  preempting scheduler or ``scancel --signal=USR2`` at any time). The run stops at its next step
  boundary with a step checkpoint (``pipeline.engine.preemption``); then submitit's own handler calls
  :meth:`RunJob.checkpoint` and requeues the job, which resumes the run exactly.
- **Records.** Each run's ``launcher/`` folder holds the job's logs and ``job.json`` (launcher, job
  id, log folder), which ``w2s sweep --status`` and a rerun of the sweep read: a job the scheduler
  still has (pending, running, requeued) is waited for, never submitted twice.
- **Paths.** The config path and ``run.output`` are made absolute, and the job starts in the
  directory the sweep was started from, so relative paths in the config mean what they mean there.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit
from rich.console import Console

from pipeline.config.schema import LauncherConfig, load_config
from pipeline.engine.checkpoint import write_json
from pipeline.engine.preemption import Preempted, arm, request_stop
from pipeline.engine.runtime import RunBusy, RunError
from pipeline.experiments.launchers import RUN_ERRORS, Job, Outcome, register_launcher

ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED")  # SLURM states of a job that will still run the run
POLL_S = 2.0
PREEMPT_SIGNAL = signal.SIGUSR2  # submitit's signal for preemption and time limits (its default)


class RunJob:
    """One student run as a submitit job: resumes the run, stops and requeues when the scheduler asks."""

    def __init__(self, config: str, overrides: tuple[str, ...], cwd: str) -> None:
        self.config, self.overrides, self.cwd = config, overrides, cwd

    def __call__(self) -> dict[str, Any]:
        from pipeline.train_student import train

        os.chdir(self.cwd)
        job_env = submitit.JobEnvironment()
        if job_env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        requeue = signal.getsignal(PREEMPT_SIGNAL)  # submitit's handler: checkpoint() + requeue + exit
        signal.signal(PREEMPT_SIGNAL, request_stop)
        arm()
        try:
            result = train(load_config(self.config, list(self.overrides)), role="student", resume=True)
        except Preempted:
            if callable(requeue):
                requeue(PREEMPT_SIGNAL, None)  # exits this process on rank 0; returns on the others
            return {"outcome": "preempted"}
        except RunBusy as exc:
            return {"outcome": "busy", "message": str(exc)}
        except RUN_ERRORS as exc:
            return {"outcome": "failed", "message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        return {"outcome": "ok", "result": result}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues: the same run, which resumes from the step checkpoint just written."""
        return submitit.helpers.DelayedSubmission(RunJob(self.config, self.overrides, self.cwd))


def absolute_job(job: Job, cwd: Path) -> RunJob:
    """The job with its config path and run directory made absolute against the sweep's directory."""
    overrides = tuple(f"run.output={(cwd / job.run_dir).resolve()}" if o.startswith("run.output=") else o
                      for o in job.overrides)
    return RunJob(str((cwd / job.config).resolve()), overrides, str(cwd.resolve()))


def submitit_executor(launcher: str, cfg: LauncherConfig, folder: Path, name: str = "w2s") -> submitit.Executor:
    """A submitit executor for ``launcher`` (``submitit_slurm`` or ``submitit_local``) with the section's parameters."""
    if launcher == "submitit_local":
        executor: submitit.Executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=cfg.timeout_min, tasks_per_node=cfg.nodes * cfg.tasks_per_node,
                                   gpus_per_node=cfg.gpus_per_node, signal_delay_s=cfg.signal_delay_s,
                                   setup=list(cfg.setup))
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=cfg.max_num_timeout)
    optional = {"partition": cfg.partition, "account": cfg.account, "qos": cfg.qos, "constraint": cfg.constraint}
    executor.update_parameters(
        job_name=name, nodes=cfg.nodes, ntasks_per_node=cfg.tasks_per_node, cpus_per_task=cfg.cpus_per_task,
        mem=f"{max(1, round(cfg.mem_gb * 1024))}MB", time=cfg.timeout_min, signal_delay_s=cfg.signal_delay_s,
        setup=list(cfg.setup), additional_parameters=dict(cfg.additional_parameters),
        array_parallelism=cfg.array_parallelism or 256, **{k: v for k, v in optional.items() if v is not None},
        **({"gpus_per_node": cfg.gpus_per_node} if cfg.gpus_per_node else {}))
    return executor


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``launcher/job.json``, or None if no submitit job was recorded for it."""
    path = run_dir / "launcher" / "job.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "job_id" in record else None


def job_of(record: dict[str, Any]) -> submitit.Job:
    """The submitit job a record names, re-attached from its folder (its state and result come from there)."""
    cls = submitit.SlurmJob if record["launcher"] == "submitit_slurm" else submitit.LocalJob
    return cls(folder=record["folder"], job_id=str(record["job_id"]))


def scheduler_state(record: dict[str, Any]) -> str:
    """The job's state as its scheduler reports it (``UNKNOWN`` when it has forgotten the job).

    SLURM is asked through ``squeue``, which every cluster answers for the jobs it still holds; submitit's
    own state comes from ``sacct``, which needs the accounting database, and is only the fallback.
    """
    if record["launcher"] == "submitit_slurm":
        try:
            out = subprocess.run(["squeue", "-h", "--states=all", "-j", str(record["job_id"]), "-o", "%T"],
                                 capture_output=True, text=True, timeout=30, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.split()[0].upper()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return str(job_of(record).state).split()[0].upper()
    except Exception:  # submitit raises whatever sacct/squeue produce when the scheduler is gone
        return "UNKNOWN"


def has_result(sj: submitit.Job) -> bool:
    """Whether rank 0 of the job wrote its result (or its error): the job has ended and ``results()`` returns."""
    return submitit.core.utils.JobPaths(sj.paths.folder, sj.job_id, task_id=0).result_pickle.exists()


def last_log_line(record: dict[str, Any]) -> str:
    """The last non-empty line of the job's stderr (then stdout) log, for a failed run's status."""
    job = job_of(record)
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        if lines:
            return lines[-1][:200]
    return "(no log)"


class SubmititLauncher:
    """Submits one job per run (or one job array) and waits for them; see the module docstring."""

    name = "submitit"
    cluster = "local"

    def __init__(self, cfg: LauncherConfig, parallel: int = 1) -> None:
        self.cfg, self.parallel = cfg, parallel

    def launch(self, jobs: list[Job], console: Console) -> list[Outcome]:
        cwd = Path.cwd()
        running: dict[int, submitit.Job] = {}
        for i, job in enumerate(jobs):  # a job the scheduler still has is waited for, not submitted again
            record = read_record(job.run_dir)
            if record is not None and record["launcher"] == self.name and scheduler_state(record) in ACTIVE:
                console.print(f"waiting for {job.name}: job {record['job_id']} is still with the scheduler")
                running[i] = job_of(record)
        new = [i for i in range(len(jobs)) if i not in running]
        # the scheduler throttles a cluster's jobs; on this machine, ``parallel`` at a time
        wave = max(1, len(new) if self.cluster == "slurm" else self.parallel)
        outcomes: dict[int, Outcome] = {}
        for start in range(0, max(len(new), 1), wave):
            part = new[start:start + wave]
            running.update(self._submit([jobs[i] for i in part], part, cwd, console))
            outcomes.update(self._wait(jobs, {i: running.pop(i) for i in list(running)}, console))
        return [outcomes[i] for i in range(len(jobs))]

    def _submit(self, jobs: list[Job], index: list[int], cwd: Path, console: Console) -> dict[int, submitit.Job]:
        """Submit ``jobs``; the scheduler's refusal (a partition or memory it cannot give) is one line."""
        try:
            return self._submit_all(jobs, index, cwd, console)
        except submitit.core.utils.FailedJobError as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise RunError(f"{self.name}: the scheduler refused the jobs ({lines[-1] if lines else 'no message'}); "
                           "change the config's launcher section (--set launcher.KEY=VALUE) and rerun") from None

    def _submit_all(self, jobs: list[Job], index: list[int], cwd: Path, console: Console) -> dict[int, submitit.Job]:
        if not jobs:
            return {}
        if self.cfg.array_parallelism > 0 and self.cluster == "slurm":  # one array, logs under the sweep's launcher/
            folder = (cwd / jobs[0].run_dir).resolve().parent / "launcher" / "%j"  # %j: <array id>_<index>
            executor = submitit_executor(self.name, self.cfg, folder, jobs[0].run_dir.parent.name)
            with executor.batch():
                submitted = [executor.submit(absolute_job(j, cwd)) for j in jobs]
        else:
            submitted = []
            for j in jobs:
                executor = submitit_executor(self.name, self.cfg, (cwd / j.run_dir).resolve() / "launcher", j.name)
                submitted.append(executor.submit(absolute_job(j, cwd)))
        for j, sj in zip(jobs, submitted):
            (j.run_dir / "launcher").mkdir(parents=True, exist_ok=True)
            write_json(j.run_dir / "launcher" / "job.json", self._record(sj))
        console.print(f"submitted {len(jobs)} jobs ({self.name}), first {submitted[0].job_id}")
        return dict(zip(index, submitted))

    def _wait(self, jobs: list[Job], running: dict[int, submitit.Job], console: Console) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        gone: dict[int, int] = {}  # polls in a row in which the scheduler no longer held a job without a result
        while len(outcomes) < len(running):  # ends when every job has ended (the scheduler ends each one)
            for i, sj in running.items():
                if i in outcomes:
                    continue
                if has_result(sj) or sj.done():
                    outcomes[i] = self._outcome(jobs[i], sj, console)
                elif self.cluster == "slurm":  # killed without a result (scancel, node failure, out of memory)
                    gone[i] = 0 if scheduler_state(self._record(sj)) in ACTIVE else gone.get(i, 0) + 1
                    if gone[i] >= 3:
                        outcomes[i] = self._outcome(jobs[i], sj, console, died=True)
            time.sleep(0 if len(outcomes) == len(running) else POLL_S)
        return outcomes

    def _record(self, sj: submitit.Job) -> dict[str, Any]:
        """What ``job.json`` records of a submitted job."""
        return {"launcher": self.name, "job_id": sj.job_id, "folder": str(sj.paths.folder), "submitted": time.time()}

    def _outcome(self, job: Job, sj: submitit.Job, console: Console, died: bool = False) -> Outcome:
        try:
            if died:
                raise RuntimeError(f"the job ended without a result; {last_log_line(self._record(sj))}")
            out = sj.results()[0]  # rank 0's (every task of a multi-task job returns)
        except Exception as exc:  # the job itself died: submitit re-raises its error or the scheduler's state
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            out = {"outcome": "failed", "message": message}
        outcome: Outcome = out["outcome"] if out.get("outcome") in ("ok", "busy") else "failed"
        line = {"ok": "finished", "busy": "running elsewhere:", "failed": "FAILED"}[outcome] + f" {job.name}"
        if outcome == "failed":
            line += f": {out.get('message', out['outcome'])} (logs in {sj.paths.folder})"
        console.print(line, highlight=False)
        return outcome


@register_launcher
class SubmititSlurm(SubmititLauncher):
    """Hydra's ``submitit_slurm``: one SLURM job per run, or an array with ``launcher.array_parallelism``."""

    name = "submitit_slurm"
    cluster = "slurm"


@register_launcher
class SubmititLocal(SubmititLauncher):
    """Hydra's ``submitit_local``: the same submitit jobs as processes on this machine."""

    name = "submitit_local"
    cluster = "local"
