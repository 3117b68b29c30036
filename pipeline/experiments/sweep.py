"""``w2s sweep``: many student runs on one cached store, each in its own run directory.

Every combination of the ``--grid`` values and ``--seeds`` becomes one run under the sweep
directory, named after its settings. The store is made or finished first (only if it is not complete); finished runs
are skipped and unfinished ones resumed, so the same command can be run again after a crash; a run
whose ``config.yaml`` differs from what the command gives (another base config or ``--set``) is
refused, naming the key, as ``--resume`` does. The runs are started by a launcher
(``pipeline/experiments/launchers.py``): one after another in this process, or with ``parallel > 1``
that many worker processes at a time, in the caller's working directory. A run that fails (a diverging lr, say) does
not stop the others; the sweep ends with an error naming the failures. A run whose directory another
live process holds (an identical sweep started twice, say) is "running elsewhere", not failed: the
sweep waits for that process to let go, then resumes the run if it is not done.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from pipeline.engine.checkpoint import write_json
from pipeline.config.schema import ConfigError, load_config
from pipeline.config.yaml_files import load_yaml, parse_override
from pipeline.engine.run_dir import first_difference
from pipeline.engine.runtime import RunError, RunLock, stderr_console
from pipeline.experiments import submitit_launchers  # noqa: F401  (registers submitit_local and submitit_slurm)
from pipeline.experiments.launchers import LAUNCHERS, BasicLauncher, Job, Launcher, LocalProcesses
from store.backends import store_lock_held
from store.lock import StoreBusy
from store.soft_label_store import SoftLabelStore, StoreError


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its directory name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]
    settings: tuple[tuple[str, Any], ...]


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``["objective.name=kd,adaptconf", "objective.threshold=0.5,1"]`` -> keys with their values."""
    grid = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not of the form key=v1,v2,...")
        key, raw = item.split("=", 1)
        try:
            values = [load_yaml(v) for v in raw.split(",") if v.strip()]
        except yaml.YAMLError as exc:
            raise ConfigError(f"--grid {key}: {raw!r} holds a value that is not YAML ({' '.join(str(exc).split())[:120]})") from exc
        values = [v for i, v in enumerate(values) if v not in values[:i]]  # kd,kd is one run, not one run twice
        if not values:
            raise ConfigError(f"--grid {key} has no values")
        parse_override(f"{key}=0")
        grid.append((key.strip(), values))
    return grid


def _slug(key: str, value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{key.split('.')[-1]}={value}")


def expand(grid: list[tuple[str, list[Any]]], seeds: list[int]) -> list[SweepRun]:
    """The runs of a grid x seeds, in a stable order."""
    keys = [k for k, _ in grid]
    runs = []
    for values in itertools.product(*[v for _, v in grid]):
        for seed in seeds:
            settings = tuple(zip(keys, values)) + (("run.seed", seed),)
            name = "__".join(_slug(k, v) for k, v in settings)
            overrides = tuple(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in settings)
            runs.append(SweepRun(name, overrides, settings))
    return runs


def check_same_settings(out: Path, run: SweepRun, cfg: Any) -> None:
    """Refuse to skip or resume a run of ``out`` that was made with other settings than this command gives."""
    stored = out / run.name / "config.yaml"
    if not stored.exists():
        return
    try:
        old = yaml.safe_load(stored.read_text())
    except yaml.YAMLError as exc:
        raise RunError(f"{stored}: not valid YAML; remove that run directory to rerun it") from exc
    diff = first_difference(old if isinstance(old, dict) else {}, cfg.to_dict())
    if diff is not None:
        key, was, now = diff
        raise RunError(f"sweep {out}: run {run.name} was made with {key}={was!r} but this command gives {now!r}; "
                       "rerun with the sweep's own settings, or choose another --output for a different sweep")


def _store_complete(path: str) -> bool:
    """Whether the store at ``path`` is complete (not missing, partial, or being written elsewhere)."""
    try:
        return SoftLabelStore.open(path).is_complete
    except StoreError:
        return False


def _status(run_dir: Path) -> str:
    if (run_dir / "result.json").exists():
        return "done"
    return "partial" if (run_dir / "checkpoints" / "state.pt").exists() else "new"


def make_launcher(name: str, base: Any, parallel: int) -> Launcher:
    """The launcher called ``name``: ``basic`` runs in this process, or ``parallel`` local processes when > 1."""
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown --launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")
    if name == "basic":
        return LocalProcesses(parallel) if parallel > 1 else BasicLauncher()
    if name == "local_processes":
        return LocalProcesses(parallel)
    return LAUNCHERS[name](base.launcher, parallel)


def sweep(config: str | Path, grid_items: list[str], seeds: list[int], base_overrides: list[str],
          output: str | Path, parallel: int = 1, console: Console | None = None,
          launcher: str = "basic") -> dict[str, Any]:
    """Run the sweep; returns the manifest written to ``<output>/sweep.json``."""
    from pipeline.infer_teacher import infer

    console = console or stderr_console()
    out = Path(output)
    grid = parse_grid(grid_items)
    runs = expand(grid, seeds)
    for r in runs:  # validate every combination, and that finished runs hold these settings, before any work
        check_same_settings(out, r, load_config(config, base_overrides + list(r.overrides) + [f"run.output={out / r.name}"]))
    base = load_config(config, base_overrides)
    run_launcher = make_launcher(launcher, base, parallel)
    if base.teacher.mode == "store" and base.teacher.store and not _store_complete(base.teacher.store):
        console.rule(f"store {base.teacher.store} is missing or unfinished: running infer-teacher once")
        try:
            infer(base, console=console)
        except StoreBusy:  # another process is writing it: wait, then finish whatever it left
            console.print(f"store {base.teacher.store} is being written by another process; waiting for it")
            while store_lock_held(base.teacher.store):
                time.sleep(1.0)
            infer(base, console=console)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"config": str(config), "base_overrides": base_overrides, "grid": {k: v for k, v in grid},
                "seeds": seeds, "runs": [{"name": r.name, "settings": dict(r.settings)} for r in runs]}
    write_json(out / "sweep.json", manifest)
    todo = [r for r in runs if _status(out / r.name) != "done"]
    console.print(f"sweep {out}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run"
                  + (f", {parallel} at a time" if parallel > 1 else ""))

    jobs = {r.name: Job(r.name, str(config), tuple(base_overrides + list(r.overrides) + [f"run.output={out / r.name}"]),
                        out / r.name) for r in todo}
    failed: list[str] = []
    pending = todo
    while pending:  # a run held by another live process (an identical sweep, say) is waited for, not failed
        outcomes = run_launcher.launch([jobs[r.name] for r in pending], console)
        failed += [r.name for r, o in zip(pending, outcomes) if o == "failed"]
        busy = [r for r, o in zip(pending, outcomes) if o == "busy"]
        if busy:
            console.print(f"{len(busy)} runs are running in another process (first {busy[0].name}); waiting for them")
            for r in busy:
                wait_until_free(out / r.name)
        pending = [r for r in busy if _status(out / r.name) != "done"]
    if failed:
        raise RunError(f"{len(failed)} of {len(todo)} sweep runs failed, first {failed[0]}; "
                       "rerun the command to retry them")
    return manifest


def wait_until_free(directory: Path, poll_s: float = 1.0) -> None:
    """Block while a live process holds ``directory``'s run lock."""
    while RunLock.is_held(directory):
        time.sleep(poll_s)
