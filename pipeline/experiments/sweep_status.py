"""``w2s sweep --status DIR``: each run's state, from its run directory and its scheduler.

- ``done``: ``result.json`` exists.
- ``running``: a live process holds the run's lock, or the scheduler runs its job (the job id is shown).
- ``queued``: the scheduler holds its job (pending, requeued after a preemption).
- ``failed``: its last job ended without finishing the run (with the last line of the job's log).
- ``partial``: checkpoints but nothing running (rerun the sweep to resume it); ``new``: not started.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.engine.runtime import RunLock
from pipeline.experiments.runs import ReportError, read_json_file
from pipeline.experiments.submitit_launchers import ACTIVE, last_log_line, read_record, scheduler_state


def run_state(run_dir: Path) -> dict[str, Any]:
    """One run's state: ``{"state", "job", "detail"}`` (see the module docstring)."""
    record = read_record(run_dir)
    job = str(record["job_id"]) if record else ""
    if (run_dir / "result.json").exists():
        return {"state": "done", "job": job, "detail": ""}
    if RunLock.is_held(run_dir):
        return {"state": "running", "job": job, "detail": ""}
    if record is not None:
        sched = scheduler_state(record)
        if sched in ACTIVE:
            return {"state": "running" if sched in ("RUNNING", "COMPLETING") else "queued", "job": job,
                    "detail": sched.lower()}
        return {"state": "failed", "job": job, "detail": last_log_line(record)}
    partial = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    return {"state": "partial" if partial else "new", "job": "", "detail": ""}


def sweep_status(output: Path) -> list[dict[str, Any]]:
    """Every run of the sweep at ``output`` (from its ``sweep.json``) with its state."""
    manifest = output / "sweep.json"
    if not manifest.exists():
        raise ReportError(f"{output}: no sweep.json here; give the directory a `w2s sweep --output` wrote")
    data = read_json_file(manifest, "rerun the sweep command to rewrite it")
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "name" in r for r in runs):
        raise ReportError(f"{manifest}: not a sweep manifest (no list of runs); rerun the sweep command to rewrite it")
    return [{"name": r["name"], **run_state(output / r["name"])} for r in runs]
