"""Shared test helpers: tiny Fashion-MNIST configs, ``w2s`` in a child process, killing a run inside an epoch,
and damaging one chunk of a store.  Fixtures stay in ``conftest.py``; the in-process CLI is ``cli_run.py``."""
from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from tests.cli_run import ok
from tests.conftest import ROOT

# ------------------------------------------------------------------------------------------ configs

DROP = object()
"""A section value that removes its key from the config (``teacher={"store": DROP}``)."""

Sections = Mapping[str, Mapping[str, Any]]


def fmnist_config(path: Path, data_dir: Path | str, *layers: Sections, **sections: Mapping[str, Any]) -> Path:
    """Write a Fashion-MNIST config to ``path`` and return it.

    ``data`` reads ``data_dir``; each layer, then the keyword sections, sets its keys over the section's
    (one level deep, like ``dict.update``; ``DROP`` removes a key)."""
    cfg: dict[str, dict[str, Any]] = {"data": {"source": "fashion_mnist", "data_dir": str(data_dir)}}
    for layer in (*layers, sections):
        for name, values in layer.items():
            section = cfg.setdefault(name, {})
            for key, value in values.items():
                if value is DROP:
                    section.pop(key, None)
                else:
                    section[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def teacher_config(out: Path, data_dir: Path | str, **sections: Mapping[str, Any]) -> Path:
    """``out/cfg.yaml``: a one-epoch vanilla linear teacher saved to ``out/teacher``, two padded-crop views
    (seed 0), the store in ``out/store``, one thread; keyword sections override (see ``fmnist_config``)."""
    base = {"views": {"kind": "pad_crop", "num_views": 2, "pad": 2, "seed": 0},
            "model": {"name": "fmnist_linear"},
            "teacher": {"checkpoint": str(out / "teacher"), "store": str(out / "store")},
            "objective": {"name": "vanilla"},
            "optim": {"epochs": 1},
            "run": {"output": str(out / "teacher"), "num_threads": 1}}
    return fmnist_config(out / "cfg.yaml", data_dir, base, **sections)


def trained_teacher(out: Path, data_dir: Path | str, **sections: Mapping[str, Any]) -> Path:
    """``teacher_config`` after ``w2s train-teacher`` has run on it."""
    path = teacher_config(out, data_dir, **sections)
    ok(["train-teacher", str(path)])
    return path


# ------------------------------------------------------------------------ w2s in a child process

def finished_demo_run(spec: Any, out: Path, run: str, acc: float, seed: int = 0) -> None:
    """A finished ``w2s demo`` teacher or ceiling run of ``spec`` (a Regime) under ``out``: the result and the
    config.yaml the demo would write, so the demo reuses it instead of training."""
    from pipeline.experiments.demo import _config

    name, extra = ((spec.teacher, ()) if run == "weak_teacher" else
                   (spec.second_teacher, spec.second_teacher_overrides) if run == "weak_teacher_2" else
                   (spec.ceiling, spec.ceiling_overrides))
    cfg = _config(spec, name, [f"run.seed={seed}", *extra, f"run.output={out / run}"])
    (out / run).mkdir(parents=True, exist_ok=True)
    (out / run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (out / run / "result.json").write_text(json.dumps({"test_acc": acc}))


def w2s_cmd(*args: str, nproc: int = 1) -> list[str]:
    """The command line of ``w2s ARGS``: ``python cli.py``, or torchrun (standalone) with ``nproc`` > 1."""
    if nproc == 1:
        return [sys.executable, str(ROOT / "cli.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / "cli.py"), *args]


def one_thread_env() -> dict[str, str]:
    """This process's environment with ``OMP_NUM_THREADS=1``."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(cmd: Sequence[str], *, timeout: float = 600, check: bool = False,
        **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the repository root to its end, its output captured as text; ``check`` requires exit 0."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **{"cwd": ROOT, **popen})
    if check:
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def w2s(*args: str, nproc: int = 1, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``w2s ARGS`` in a child process (torchrun with ``nproc`` > 1) to its end; ``kw`` as for ``run``."""
    return run(w2s_cmd(*args, nproc=nproc), **kw)


def start(cmd: Sequence[str], *, capture: bool = False, **popen: Any) -> subprocess.Popen:
    """Start ``cmd`` in the repository root: its output discarded, or with ``capture`` piped as text
    (stderr into stdout); ``popen`` overrides any of these."""
    pipes: dict[str, Any] = ({"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True} if capture
                             else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL})
    return subprocess.Popen(list(cmd), **{"cwd": ROOT, **pipes, **popen})


# ------------------------------------------------------------------------- killing inside an epoch

def mid_epoch(checkpoints: Path) -> Callable[[], bool]:
    """Holds once a run has an epoch checkpoint and a step checkpoint written after it: it is inside a later epoch.

    (Right after an epoch checkpoint, the previous epoch's step checkpoint exists for an instant, until the
    loop removes it as superseded: it is older than the epoch checkpoint, so it does not count.)"""
    def ready() -> bool:
        try:
            return (checkpoints / "step.pt").stat().st_mtime_ns > (checkpoints / "state.pt").stat().st_mtime_ns
        except FileNotFoundError:
            return False

    return ready


def store_has_chunks(store: Path | str, n: int) -> Callable[[], bool]:
    """Holds once the store at ``store`` opens and has at least ``n`` chunks written."""
    from store.soft_label_store import SoftLabelStore

    def ready() -> bool:
        try:
            return SoftLabelStore.open(store).done_mask().sum() >= n
        except Exception:
            return False

    return ready


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen, *, timeout: float = 300, interval: float = 0.05,
             strict: bool = True) -> None:
    """Poll ``ready()`` every ``interval`` s until it holds.  ``strict``: fail if ``proc`` ends first (with its
    output, when piped) or ``timeout`` s pass; otherwise just stop waiting then."""
    deadline = time.time() + timeout
    while not ready():
        if strict:
            assert proc.poll() is None, ("the run ended before it was killed "  # its output only when piped
                                         f"{proc.stdout.read() if proc.stdout else ''}")
            assert time.time() < deadline, f"not ready after {timeout} s"
        elif proc.poll() is not None or time.time() >= deadline:
            return
        time.sleep(interval)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (torchrun's workers run in their own process groups)."""
    children, out, todo = _children(), [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def kill(proc: subprocess.Popen, *, tree: bool = False) -> None:
    """SIGKILL ``proc`` (with ``tree``: and all its descendants at once) and wait until they are gone."""
    if not tree:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in pids[1:]):
        assert time.time() < deadline
        time.sleep(0.01)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, jitter: random.Random | None = None,
              tree: bool = False, **wait: Any) -> None:
    """Once ``ready()`` holds (``wait`` as for ``wait_for``), sleep a moment of 0-0.5 s drawn from ``jitter``
    (if given), then SIGKILL ``proc`` (its whole tree with ``tree``) and wait until it is gone."""
    wait_for(ready, proc, **wait)
    if jitter is not None:
        time.sleep(jitter.uniform(0.0, 0.5))
    kill(proc, tree=tree)


def wait_unlocked(run_dir: Path, timeout: float = 60) -> None:
    """Wait until no process holds the run directory's lock (a killed rank's fd may outlive it briefly)."""
    deadline = time.time() + timeout
    while True:
        with open(run_dir / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, f"{run_dir} stays locked after the kill"
        time.sleep(0.05)


# ------------------------------------------------------------------------------ damaging a store

def corrupt_chunk(store: Path, block: int, view: int, *, array: str = "logits", at: int | None = None,
                  mask: int = 0x5A) -> Path:
    """XOR one byte of the zarr chunk (``block``, ``view``) of ``array`` with ``mask``: byte ``at``, by default
    the middle one.  Returns the chunk file."""
    chunk = store / array / "c" / str(block) / str(view) / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2 if at is None else at] ^= mask
    chunk.write_bytes(bytes(raw))
    return chunk
