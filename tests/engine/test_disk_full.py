"""A real full file system under the store and under a run: one line, then a clean rerun once there is room.

The file system is a small tmpfs that the test mounts (root); where mounting is not allowed the
child gets a file size limit (RLIMIT_FSIZE) instead, which makes the same writes fail.
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from store.soft_label_store import SoftLabelStore
from tests.helpers import DROP, one_thread_env, trained_teacher, w2s


@contextlib.contextmanager
def small_fs(where: Path, kib: int) -> Iterator[tuple[Callable[[int], None], Callable[[], None] | None]]:
    """Mount a ``kib`` KiB tmpfs on ``where``; yields (resize, preexec): resize(kib) grows it, and
    preexec (only without mount rights) limits a child's file size to ``kib`` KiB instead."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True).returncode == 0
    limit = {"kib": kib}

    def resize(new: int) -> None:
        limit["kib"] = new
        if mounted:
            subprocess.run(["mount", "-o", f"remount,size={new}k", str(where)], check=True)

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit["kib"] * 1024, resource.RLIM_INFINITY))

    try:
        yield resize, None if mounted else preexec
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _w2s(*args: str, preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return w2s(*args, preexec_fn=preexec, env=one_thread_env())


def _one_error(res: subprocess.CompletedProcess, *patterns: str) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert 1 <= len(lines) <= 3 and "Traceback" not in res.stderr, res.stderr
    text = " ".join(lines)
    assert any(p in text for p in patterns), text
    return text


@pytest.fixture(scope="module")
def config(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk_full")
    return trained_teacher(out, fmnist_dir, data={"limit": 256, "test_limit": 100},
                           teacher={"store": DROP, "chunk_samples": 64},
                           optim={"epochs": 2, "batch_size": 64, "eval_batch_size": 100})


def test_store_on_a_full_disk_says_so_and_resumes_when_there_is_room(config, tmp_path):
    mnt = tmp_path / "mnt"
    with small_fs(mnt, 64) as (resize, preexec):
        args = ("infer-teacher", str(config), "--set", f"teacher.store={mnt / 'store'}")
        text = _one_error(_w2s(*args, preexec=preexec), "no space left on device", "File too large")
        assert "infer-teacher" in text or "rerun the same command" in text
        resize(8192)
        res = _w2s(*args)
        assert res.returncode == 0, res.stderr
        store = SoftLabelStore.open(mnt / "store")
        assert store.is_complete and not store.verify()


def test_epoch_checkpoint_on_a_full_disk_keeps_the_run_resumable(config, tmp_path):
    mnt = tmp_path / "mnt"
    with small_fs(mnt, 48) as (resize, preexec):  # room for config and metrics, not for the ~70 KB state.pt
        run = mnt / "run"
        args = ("train-teacher", str(config), "--set", f"run.output={run}")
        text = _one_error(_w2s(*args, preexec=preexec), "no space left on device", "write failed")
        assert "--resume" in text
        assert not [p for p in run.rglob("*.tmp")], "a temporary file was left behind"
        resize(8192)
        res = _w2s(*args, "--resume")
        assert res.returncode == 0, res.stderr
        assert (run / "result.json").exists() and (run / "model.safetensors").exists()
