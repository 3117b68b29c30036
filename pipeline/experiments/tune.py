"""``w2s tune``: an Optuna study over a student's hyper-parameters on one store.

Every trial is a normal student run in ``DIR/trials/<number:04d>`` (config.yaml, metrics,
result.json), trained on the given config with the trial's values of the searched keys
(``--space``, :mod:`pipeline.experiments.tune_space`) as overrides. The score is the **last epoch's
validation accuracy** (``val_acc``, from ``data.val_fraction``); the test split is never used to
choose. Each epoch's ``val_acc`` is reported to the pruner (``MedianPruner`` unless ``--pruner none``).

``--parallel K`` runs K worker processes (``python -m pipeline.experiments.tune worker DIR``, logs in
``DIR/workers/<i>.log``), each ``study.optimize`` on the shared storage
(:mod:`pipeline.experiments.tune_storage`) until N trials are finished (complete or pruned); with
``--launcher submitit_local|submitit_slurm`` the K workers are submitit jobs instead (settings: the
config's ``launcher`` section, logs in ``DIR/workers/submitit``).

Rerunning the same command continues the study (with the settings it was started with). Before any
trial starts, a trial left RUNNING by a dead worker (neither its run directory nor its worker's lock,
``DIR/workers/<id>.lock``, is held by a live process), or one stopped by Ctrl-C, is marked FAIL and
its parameters are queued again (``study.enqueue_trial``): an interrupted trial restarts, from
scratch, with the same parameters.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from pipeline.config.schema import Config, ConfigError, load_config
from pipeline.config.yaml_files import parse_override
from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import RunError, RunLock, stderr_console
from pipeline.experiments.launchers import RUN_ERRORS, worker_env
from pipeline.experiments.tune_space import check_space, override, parse_space
from pipeline.experiments.tune_storage import (JOURNAL_FILE, SETTINGS_FILE, STORAGE_ENV, Settings, check_same_settings,
                                               open_study, redact)
from store.lock import flock_held
from store.soft_label_store import SoftLabelStore, StoreError

PRUNERS = ("median", "none")
TUNE_LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 2.0
STOP_WAIT_S = 10.0


# -- workers --------------------------------------------------------------------------------------

def worker_lock_path(out: Path, worker: str) -> Path:
    return out / "workers" / f"{worker}.lock"


@contextmanager
def worker_lock(out: Path) -> Iterator[str]:
    """Hold ``DIR/workers/<host>-<pid>.lock`` while this process runs trials; yields the worker's id.

    The kernel drops the lock when the process dies, so a RUNNING trial whose worker's lock is free
    was left by a dead worker (also in the moments before and after its run directory is locked)."""
    worker = f"{socket.gethostname()}-{os.getpid()}"
    path = worker_lock_path(out, worker)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a new pid's file: nobody else takes it
        try:
            yield worker
        finally:
            path.unlink(missing_ok=True)


def trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


class Objective:
    """One trial: its parameters as overrides, a student run in its directory, the last epoch's ``val_acc``."""

    def __init__(self, out: Path, settings: Settings, worker: str, console: Console) -> None:
        self.out, self.settings, self.worker, self.console = out, settings, worker, console

    def __call__(self, trial: optuna.Trial) -> float:
        from pipeline.train_student import train

        trial.set_user_attr("worker", self.worker)
        run_dir = trial_dir(self.out, trial.number)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        params = {p.key: p.suggest(trial) for p in self.settings.space}
        last: dict[str, Any] = {}

        def on_epoch(row: dict[str, Any]) -> None:
            if "val_acc" not in row:
                raise RunError(f"{run_dir}: the run reports no val_acc (does a scenario drop the validation split?)")
            last.update(row)
            trial.report(row["val_acc"], int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {int(row['epoch']) + 1}")

        try:
            cfg = load_config(self.settings.config, [*self.settings.overrides,
                                                     *(override(k, v) for k, v in params.items()),
                                                     f"run.output={run_dir}"])
            self.console.rule(f"trial {trial.number}: {_params_text(params)}")
            train(cfg, role="student", resume=False, console=self.console, on_epoch=on_epoch)
        except RUN_ERRORS as exc:
            trial.set_user_attr("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it FAIL; the next run queues it again
            raise
        return float(last["val_acc"])


class FailureLimit:
    """Stop this process's optimization after ``limit`` failed trials (a config every trial fails on)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failed = limit, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.failed += 1
            if self.failed >= self.limit:
                study.stop()


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(t: FrozenTrial) -> str:
    """One progress line: number, state, value (or why it stopped) and parameters."""
    if t.state == TrialState.COMPLETE:
        what = f"val_acc {t.value:.4f}"
    elif t.state == TrialState.PRUNED:
        steps = sorted(t.intermediate_values)
        what = (f"after epoch {steps[-1] + 1} (val_acc {t.intermediate_values[steps[-1]]:.4f})" if steps else "")
    else:
        what = t.user_attrs.get("error", "interrupted" if t.user_attrs.get("interrupted") else "")
    return f"trial {t.number} {t.state.name} {what}".rstrip() + f"  {_params_text(t.params)}"


class Progress:
    """Prints each trial once, when it has finished (from a worker's callback or by polling the storage)."""

    def __init__(self, console: Console, done: list[FrozenTrial] = ()) -> None:
        self.console = console
        self.seen = {t.number for t in done}

    def show(self, trials: list[FrozenTrial]) -> None:
        for t in sorted(trials, key=lambda t: t.number):
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                self.console.print(trial_line(t), highlight=False)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.show([trial])


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_worker(out: Path, storage_url: str | None, console: Console, progress: Progress | None = None) -> None:
    """Run trials against the shared study until it has the settings' number of finished trials."""
    settings = Settings.read(out)
    study = open_study(out, settings, storage_url)
    if finished(study) >= settings.trials:
        return
    with worker_lock(out) as worker:
        study.optimize(Objective(out, settings, worker, console), catch=RUN_ERRORS, gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=FINISHED),
                                  FailureLimit(settings.trials), progress or Progress(console)])


def worker_main(argv: list[str]) -> int:
    """``python -m pipeline.experiments.tune worker DIR``: one worker process (the storage URL in its environment)."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m pipeline.experiments.tune worker DIR", file=sys.stderr)
        return 2
    console = stderr_console()
    try:
        run_worker(Path(argv[1]), os.environ.get(STORAGE_ENV), console)
    except (RunError, ConfigError) as exc:
        console.print(f"error: {str(exc).splitlines()[0]}", highlight=False)
        return 2
    return 0


class WorkerJob:
    """One worker as a submitit job: trials until the study is done (the storage URL comes in its environment)."""

    def __init__(self, out: str, cwd: str) -> None:
        self.out, self.cwd = out, cwd

    def __call__(self) -> None:
        os.chdir(self.cwd)  # relative paths in the config mean what they meant where tune started
        run_worker(Path(self.out), os.environ.get(STORAGE_ENV), stderr_console())


# -- continuing a study ---------------------------------------------------------------------------

def _alive(out: Path, t: FrozenTrial, any_worker_alive: bool) -> bool:
    """Whether a live process may still be running the RUNNING trial ``t``."""
    if RunLock.is_held(trial_dir(out, t.number)):
        return True
    worker = t.user_attrs.get("worker")
    if worker is None:  # the moment between creating the trial and claiming it: only a live worker is there
        return any_worker_alive
    return flock_held(worker_lock_path(out, worker))


def requeue_interrupted(out: Path, study: optuna.Study, console: Console) -> int:
    """Mark trials left RUNNING by dead workers FAIL, and queue every interrupted trial's parameters again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    any_worker_alive = any(flock_held(p) for p in (out / "workers").glob("*.lock"))
    queued = 0
    for t in trials:
        dead = t.state == TrialState.RUNNING and not _alive(out, t, any_worker_alive)
        stopped = t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
        if t.number in retried or not (dead or stopped):
            continue
        if dead:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            if "worker" in t.user_attrs:  # a dead worker's lock file (its process can no longer hold it)
                worker_lock_path(out, t.user_attrs["worker"]).unlink(missing_ok=True)
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        queued += 1
        console.print(f"trial {t.number} was interrupted ({'its worker died' if dead else 'Ctrl-C'}): "
                      f"marked FAIL, its parameters queued again ({_params_text(t.params)})", highlight=False)
    return queued


# -- the command ----------------------------------------------------------------------------------

def _store_complete(cfg: Config) -> bool:
    if cfg.teacher.mode != "store" or not cfg.teacher.store:
        return True
    try:
        return SoftLabelStore.open(cfg.teacher.store).is_complete
    except StoreError:
        return False


def settings_for(config: str | Path, space_items: list[str], trials: int, base_overrides: list[str], out: Path,
                 storage_url: str | None, study_name: str | None, pruner: str) -> Settings:
    """Check everything the command is given (before any trial starts) and return the study's settings."""
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    for item in base_overrides:
        parse_override(item)
    space = parse_space(space_items)
    base = load_config(config, base_overrides)
    if base.data.val_fraction <= 0:
        raise ConfigError("tune chooses on validation accuracy; set data.val_fraction > 0, "
                          "e.g. --set data.val_fraction=0.1")
    check_space(config, base_overrides, space)
    if not _store_complete(base):
        raise RunError(f"store {base.teacher.store} is missing or unfinished; run w2s infer-teacher {config} "
                       "first (tune trains every trial on the one store)")
    return Settings(str(config), tuple(base_overrides), tuple(space), base.to_dict(),
                    study_name or out.resolve().name, redact(storage_url) if storage_url else None, trials, pruner)


def tune(config: str | Path, space_items: list[str], trials: int, base_overrides: list[str], output: str | Path,
         parallel: int = 1, storage_url: str | None = None, study_name: str | None = None, pruner: str = "median",
         console: Console | None = None, launcher: str = "basic") -> FrozenTrial | None:
    """Run (or continue) the study until ``trials`` trials are finished; returns the best trial."""
    console = console or stderr_console()
    out = Path(output)
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}")
    if launcher not in TUNE_LAUNCHERS:
        raise ConfigError(f"unknown --launcher {launcher!r}; choose one of {', '.join(TUNE_LAUNCHERS)}")
    settings = settings_for(config, space_items, trials, base_overrides, out, storage_url, study_name, pruner)
    check_same_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(out, settings, storage_url, create=True)
    if not study.get_trials(deepcopy=False) and any((out / "trials").glob("*")):
        raise RunError(f"{out / 'trials'} holds runs but study {settings.study!r} has no trials (was "
                       f"{out / JOURNAL_FILE} removed?); choose another --output for a new study")
    write_json(out / SETTINGS_FILE, settings.to_json())
    requeue_interrupted(out, study, console)
    progress = Progress(console, study.get_trials(deepcopy=False))
    done = finished(study)
    console.print(f"study {settings.study}: {done} of {trials} trials finished"
                  + (f", {parallel} workers" if parallel > 1 and done < trials else ""), highlight=False)
    if done < trials:
        if launcher != "basic":
            _submit_workers(out, parallel, storage_url, study, progress, console, launcher,
                            load_config(config, base_overrides).launcher)
        elif parallel == 1:
            run_worker(out, storage_url, console, progress)
        else:
            _run_workers(out, parallel, storage_url, study, progress, console)
    return _summary(out, study, settings, console)


def _run_workers(out: Path, parallel: int, storage_url: str | None, study: optuna.Study, progress: Progress,
                 console: Console) -> None:
    """Start ``parallel`` worker processes, print each trial as it finishes, and wait for them."""
    env = worker_env()
    if storage_url:
        env[STORAGE_ENV] = storage_url
    logs = [out / "workers" / f"{i}.log" for i in range(parallel)]
    logs[0].parent.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            with open(log, "a") as f:
                procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.experiments.tune", "worker", str(out)],
                                              stdout=f, stderr=subprocess.STDOUT, cwd=Path.cwd(), env=env))
        while any(p.poll() is None for p in procs):
            progress.show(study.get_trials(deepcopy=False))
            time.sleep(POLL_S)
    finally:
        for p in procs:  # on Ctrl-C or an error here: stop the workers (their trials are queued again next run)
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=STOP_WAIT_S)
    progress.show(study.get_trials(deepcopy=False))
    for log, p in zip(logs, procs):
        if p.returncode != 0:
            console.print(f"worker {log.stem} exited with code {p.returncode}; see {log}", highlight=False)


def _submit_workers(out: Path, parallel: int, storage_url: str | None, study: optuna.Study, progress: Progress,
                    console: Console, launcher: str, launcher_cfg: Any) -> None:
    """Submit ``parallel`` workers as submitit jobs, print each trial as it finishes, and wait for the jobs."""
    from pipeline.experiments.submitit_launchers import submitit_executor

    folder = (out / "workers" / "submitit").resolve()
    executor = submitit_executor(launcher, launcher_cfg, folder, f"tune-{out.resolve().name}")
    saved = os.environ.get(STORAGE_ENV)
    if storage_url:  # the jobs inherit the environment: the URL's password is written nowhere
        os.environ[STORAGE_ENV] = storage_url
    try:
        jobs = [executor.submit(WorkerJob(str(out.resolve()), str(Path.cwd()))) for _ in range(parallel)]
    finally:
        if saved is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = saved
    console.print(f"submitted {parallel} workers ({launcher}), first job {jobs[0].job_id}; logs in {folder}",
                  highlight=False)
    try:
        while not all(j.done() for j in jobs):
            progress.show(study.get_trials(deepcopy=False))
            time.sleep(POLL_S)
    except BaseException:  # Ctrl-C here: the workers stop too (their trials are queued again next run)
        for j in jobs:
            j.cancel(check=False)
        raise
    progress.show(study.get_trials(deepcopy=False))
    for j in jobs:
        try:
            j.result()
        except Exception as exc:  # submitit re-raises the job's error, or the scheduler's verdict
            lines = str(exc).strip().splitlines()
            console.print(f"worker job {j.job_id} failed: {lines[-1] if lines else type(exc).__name__} "
                          f"(logs in {folder})", highlight=False)


def _summary(out: Path, study: optuna.Study, settings: Settings, console: Console) -> FrozenTrial | None:
    """The final lines: the counts and the best trial; an error when the study is short of its trials."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    console.print(f"study {settings.study}: " + ", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        console.print(f"best trial {best.number}: val_acc {best.value:.4f}  {_params_text(best.params)}  "
                      f"({trial_dir(out, best.number)})", highlight=False)
    done = sum(t.state in FINISHED for t in trials)
    if done < settings.trials:
        errors = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
        first = f"; first failure: trial {errors[0].number}: {errors[0].user_attrs['error']}" if errors else ""
        raise RunError(f"study {settings.study}: {done} of {settings.trials} trials finished{first}; "
                       "rerun the same command to continue")
    return best


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
