"""How a sweep's runs are started: the :class:`Launcher` protocol and its registry.

A launcher gets the sweep's jobs (a config path and overrides each, every path absolute or relative
to the caller's working directory) and returns each one's outcome: ``"ok"``, ``"failed"`` (the run's
own error, already reported), or ``"busy"`` (another live process holds the run directory: the sweep
waits for it). Adding a way to run jobs (a cluster scheduler, say) is one class here::

    @register_launcher
    class MyLauncher:
        name = "my_launcher"

        def launch(self, jobs, console):
            ...  # start each job as ``python -m pipeline.experiments.launchers CONFIG KEY=VALUE...``
            return ["ok"] * len(jobs)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Literal, Protocol

from rich.console import Console

import pipeline.scenarios  # noqa: F401  (a worker process registers the built-in scenarios as the CLI does)
from pipeline.config.schema import ConfigError, load_config
from pipeline.engine.runtime import RunBusy, RunError, stderr_console
from store.soft_label_store import StoreError

ROOT = Path(__file__).resolve().parents[2]
BUSY = 75  # a worker's exit code when another process holds its run directory (sysexits' EX_TEMPFAIL)
RUN_ERRORS = (ConfigError, RunError, StoreError, ValueError, OSError)  # a run's own failure, not the sweep's
Outcome = Literal["ok", "failed", "busy"]


@dataclass(frozen=True)
class Job:
    """One student run of a sweep: its name, config file, overrides (``run.output`` among them) and directory."""

    name: str
    config: str
    overrides: tuple[str, ...]
    run_dir: Path


class Launcher(Protocol):
    """Runs a sweep's jobs; one outcome per job, in order."""

    name: ClassVar[str]

    def launch(self, jobs: list[Job], console: Console) -> list[Outcome]: ...


LAUNCHERS: dict[str, Callable[..., Launcher]] = {}


def register_launcher(cls: type) -> type:
    """Class decorator: make a launcher available by its ``name``."""
    LAUNCHERS[cls.name] = cls
    return cls


def _message(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@register_launcher
class BasicLauncher:
    """Hydra's ``basic``: the jobs one after another, in this process."""

    name = "basic"

    def launch(self, jobs: list[Job], console: Console) -> list[Outcome]:
        from pipeline.train_student import train

        outcomes: list[Outcome] = []
        for i, job in enumerate(jobs):
            console.rule(f"[{i + 1}/{len(jobs)}] {job.name}")
            try:
                train(load_config(job.config, list(job.overrides)), role="student", resume=True, console=console)
                outcomes.append("ok")
            except RunBusy:
                outcomes.append("busy")
            except RUN_ERRORS as exc:
                console.print(f"FAILED {job.name}: {_message(exc)}", highlight=False)
                outcomes.append("failed")
        return outcomes


@register_launcher
class LocalProcesses:
    """``parallel`` worker processes at a time on this machine, each logging to ``<run>/sweep.log``."""

    name = "local_processes"

    def __init__(self, parallel: int = 2) -> None:
        self.parallel = parallel

    def launch(self, jobs: list[Job], console: Console) -> list[Outcome]:
        def one(job: Job) -> Outcome:
            log = job.run_dir / "sweep.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pipeline.experiments.launchers", job.config, *job.overrides]
            with open(log, "a") as f:  # appended: another sweep's worker may be writing this run's log
                # the caller's working directory: relative paths mean what they mean to the basic launcher
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=Path.cwd(),
                                      env=worker_env()).returncode
            outcome: Outcome = "ok" if code == 0 else "busy" if code == BUSY else "failed"
            console.print({"ok": "finished", "busy": "running elsewhere:", "failed": "FAILED"}[outcome]
                          + f" {job.name}" + (f" (see {log})" if outcome == "failed" else ""))
            return outcome

        with ThreadPoolExecutor(self.parallel) as pool:
            return list(pool.map(one, jobs))


def worker_env() -> dict[str, str]:
    """The environment of a worker process: this one's, with the project root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def worker(argv: list[str]) -> int:
    """``python -m pipeline.experiments.launchers CONFIG KEY=VALUE...``: one resumed student run.

    Exit 0 when done, 2 on the run's own errors, :data:`BUSY` when another process holds its directory.
    """
    from pipeline.train_student import train

    console = stderr_console()
    try:
        result = train(load_config(argv[0], argv[1:]), role="student", resume=True, console=console)
    except RunBusy as exc:
        console.print(f"busy: {exc}", highlight=False)
        return BUSY
    except RUN_ERRORS as exc:
        console.print(f"error: {_message(exc)}", highlight=False)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
