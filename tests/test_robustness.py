"""Distributed runs (torchrun, gloo), resume after SIGKILL, store integrity and bad input.

These tests start real subprocesses: ``python cli.py`` and ``python -m torch.distributed.run``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cli import app

from pipeline.engine.runtime import RunLock
from store.soft_label_store import SoftLabelStore
from tests.conftest import write_idx

ROOT = Path(__file__).resolve().parent.parent


def _config(path: Path, data_dir: Path, out: Path, **sections) -> Path:
    cfg = {"data": {"source": "fashion_mnist", "data_dir": str(data_dir), "limit": 1024, "test_limit": 500},
           "views": {"kind": "pad_crop", "num_views": 2, "pad": 2, "seed": 0},
           "model": {"name": "fmnist_mlp", "kwargs": {"hidden": 64}},
           "teacher": {"checkpoint": str(out / "teacher"), "store": str(out / "store"), "chunk_samples": 128,
                       "batch_size": 128},
           "objective": {"name": "adaptconf", "gt_weight": 0.5},
           "optim": {"epochs": 3, "batch_size": 64, "eval_batch_size": 250, "lr": 0.05},
           "run": {"output": str(out / "run"), "num_threads": 1}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _cli(*args: str, check: bool = True) -> Result:
    """The CLI in this process (fast); the kill and torchrun tests below use real subprocesses."""
    r = CliRunner().invoke(app, list(args))
    res = Result(r.exit_code, r.stdout, r.stderr)
    if check:
        assert res.returncode == 0, res.stderr[-3000:] + repr(r.exception)
    return res


def _torchrun(*args: str, nproc: int = 2) -> None:
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                          str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s"), r.pop("epoch_s"), r.pop("store_read_s", None)
    return rows


@pytest.fixture(scope="module")
def base(fmnist_dir, tmp_path_factory):
    """A weak teacher and a complete store made by one process."""
    out = tmp_path_factory.mktemp("robust")
    cfg = _config(out / "cfg.yaml", fmnist_dir, out)
    _cli("train-teacher", str(cfg), "--set", "model.name=fmnist_linear", "--set", "model.kwargs={}", "--set", "objective.name=vanilla",
         "--set", "optim.epochs=1", "--set", f"run.output={out / 'teacher'}")
    _cli("infer-teacher", str(cfg))
    return out, cfg


def test_ddp_two_ranks_match_one_process(base, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): same weights as one process with the same global batch."""
    out, cfg = base
    same = ("--set", "optim.epochs=2", "--set", "optim.sched_on_updates=true")  # the tolerance below was set for this lr
    _cli("train-student", str(cfg), *same, "--set", f"run.output={tmp_path / 'single'}")
    _torchrun("train-student", str(cfg), *same, "--set", f"run.output={tmp_path / 'ddp'}")
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)
    sm, dm = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    assert [r["test_acc"] for r in sm] == [r["test_acc"] for r in dm]
    assert sm[-1]["loss"] == pytest.approx(dm[-1]["loss"], rel=1e-4)


def test_parallel_infer_teacher_equals_single_process(base, tmp_path):
    out, cfg = base
    _torchrun("infer-teacher", str(cfg), "--set", f"teacher.store={tmp_path / 'par'}")
    a, b = SoftLabelStore.open(out / "store"), SoftLabelStore.open(tmp_path / "par")
    assert b.is_complete
    for name in ("logits", "view_params", "labels", "chunk_crc"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def _kill_when(cmd: list[str], ready, rng: random.Random) -> None:
    """Start ``cmd``; once ``ready()`` holds, wait a random moment and SIGKILL it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_train_student_resume_after_sigkill(base, tmp_path):
    out, cfg = base
    args = ["train-student", str(cfg), "--set", "optim.epochs=8"]  # enough epochs left to be killed in
    _cli(*args, "--set", f"run.output={tmp_path / 'clean'}")
    killed = tmp_path / "killed"
    rng = random.Random(7)
    metrics = killed / "metrics.jsonl"
    cmd = [sys.executable, str(ROOT / "cli.py"), *args, "--set", f"run.output={killed}"]
    _kill_when(cmd, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 1, rng)
    assert not (killed / "result.json").exists(), "the run finished before it was killed"
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(tmp_path / "clean"), _weights(killed)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
    assert _metrics(tmp_path / "clean") == _metrics(killed)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (torchrun's workers run in their own process groups)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and all its descendants at once, and wait until they are gone."""
    pids = [proc.pid, *_descendants(proc.pid)]
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


def _wait_unlocked(run: Path) -> None:
    """Wait until no process holds the run directory's lock (a killed rank's fd may outlive it briefly)."""
    import fcntl

    deadline = time.time() + 60
    while True:
        with open(run / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, f"{run} stays locked after the kill"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _run_cmd(args: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(ROOT / "cli.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / "cli.py"), *args]


@pytest.mark.parametrize("mode,nproc,every", [("store", 1, 3), ("online", 1, 7), ("store", 2, 5), ("online", 2, 11)])
def test_student_step_checkpoint_sigkill_resume_is_exact(base, tmp_path, mode, nproc, every):
    """A student (store or online teacher; one process or torchrun x2) killed inside epoch 2, at a different
    point per case, resumes from its step checkpoint and ends with exactly the weights and metrics of an
    uninterrupted run."""
    out, cfg = base
    args = ["train-student", str(cfg), "--set", f"teacher.mode={mode}", "--set", "optim.epochs=2",
            "--set", "optim.batch_size=16", "--set", f"run.checkpoint_every_steps={every}",
            "--set", "run.deterministic=true",
            "--set", "augment.mixup=0.4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.Popen(_run_cmd([*args, "--set", f"run.output={tmp_path / 'ref'}"], nproc), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cut = tmp_path / "cut"
    cmd = _run_cmd([*args, "--set", f"run.output={cut}"], nproc)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = cut / "checkpoints"
    deadline = time.time() + 300
    while not ((ckpt / "state.pt").exists() and (ckpt / "step.pt").exists()):  # inside epoch 2 of 2
        assert proc.poll() is None, "the run ended before it was killed"
        assert time.time() < deadline
        time.sleep(0.002)
    _kill_tree(proc)
    _wait_unlocked(cut)
    assert not (cut / "result.json").exists()
    from pipeline.engine.checkpoint import load_state

    done = int(load_state(ckpt / "step.pt")["step"])
    assert done % every == 0 and 0 < done < 64  # 1024 samples / 16 per step
    if nproc == 2:
        res = _cli(*args, "--set", f"run.output={cut}", "--resume", check=False)
        assert res.returncode != 0 and "written by 2 processes but this run has 1" in " ".join(res.stderr.split())
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(step checkpoint)" in res.stderr
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    a, b = _weights(tmp_path / "ref"), _weights(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _metrics(tmp_path / "ref") == _metrics(cut)
    assert not (ckpt / "step.pt").exists()  # superseded by the epoch checkpoint


def test_chunked_bounded_reads_train_and_two_ranks_share_the_chunks(base, tmp_path):
    """The opt-in chunked order with bounded read-ahead trains to a finished run; under torchrun x2 it
    still runs (each rank on its own chunks); with a validation hold-out it is refused in one line."""
    out, cfg = base
    opts = ["--set", "teacher.read_order=chunked", "--set", "teacher.read_buffer=bounded", "--set", "optim.epochs=2"]
    res = _cli("train-student", str(cfg), *opts, "--set", f"run.output={tmp_path / 'one'}")
    assert json.loads(res.stdout.splitlines()[-1])["epochs"] == 2
    _torchrun("train-student", str(cfg), *opts, "--set", f"run.output={tmp_path / 'two'}")
    assert (tmp_path / "two" / "result.json").exists()
    bad = _cli("train-student", str(cfg), *opts, "--set", "data.val_fraction=0.1", "--set",
               f"run.output={tmp_path / 'bad'}", check=False)
    assert bad.returncode == 2 and "read_order chunked needs the whole store" in bad.stderr


def test_infer_teacher_resume_after_sigkill(base, tmp_path):
    out, cfg = base
    target = tmp_path / "store"
    args = [sys.executable, str(ROOT / "cli.py"), "infer-teacher", str(cfg), "--set", f"teacher.store={target}",
            "--set", "teacher.chunk_samples=32", "--set", "teacher.batch_size=32"]

    def some_chunks() -> bool:
        try:
            return SoftLabelStore.open(target).done_mask().sum() >= 3
        except Exception:
            return False

    _kill_when(args, some_chunks, random.Random(3))
    partial = SoftLabelStore.open(target)
    assert not partial.is_complete
    done_before = int(partial.done_mask().sum())
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["computed_chunks"] == partial.done_mask().size - done_before
    ref = tmp_path / "ref"
    _cli("infer-teacher", str(cfg), "--set", f"teacher.store={ref}", "--set", "teacher.chunk_samples=32")
    a, b = SoftLabelStore.open(target), SoftLabelStore.open(ref)
    for name in ("logits", "view_params", "labels"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def test_corrupt_chunk_found_by_inspect_and_refused_for_training(base, tmp_path):
    out, cfg = base
    store = tmp_path / "store"
    _cli("infer-teacher", str(cfg), "--set", f"teacher.store={store}")
    chunk = store / "logits" / "c" / "2" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    res = _cli("inspect", str(store), "--verify", check=False)
    assert res.returncode == 1 and "block 2, view 1" in res.stderr
    res = _cli("train-student", str(cfg), "--set", f"teacher.store={store}", "--set", f"run.output={tmp_path / 'r'}",
               check=False)
    assert res.returncode == 2 and "view 1" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_chunk_found_by_the_read_ahead_stops_before_its_epoch(base, tmp_path):
    """Epoch 2 replays view 2, read in the background during epoch 1: its corrupt chunk stops the run with
    the one-line error before epoch 2 starts (epoch 1's checkpoint kept), not with a hang."""
    out, cfg = base
    store = tmp_path / "store"
    _cli("infer-teacher", str(cfg), "--set", f"teacher.store={store}")
    chunk = store / "logits" / "c" / "3" / "2" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    run = tmp_path / "r"
    start = time.time()
    res = _cli("train-student", str(cfg), "--set", f"teacher.store={store}", "--set", "optim.epochs=2",
               "--set", f"run.output={run}", check=False)
    assert res.returncode == 2 and "block 3, view 2" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 or "error:" in res.stderr.strip().splitlines()[-1]
    assert time.time() - start < 300
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not (run / "result.json").exists()


def test_non_finite_logits_refused(base, tmp_path):
    out, cfg = base
    store = tmp_path / "store"
    _cli("infer-teacher", str(cfg), "--set", f"teacher.store={store}")
    s = SoftLabelStore.open(store, mode="r+")
    block = s.group["logits"][0:128, 1, :]
    block[5, 3] = np.inf
    s.group["logits"][0:128, 1, :] = block
    res = _cli("train-student", str(cfg), "--set", f"teacher.store={store}", "--set", f"run.output={tmp_path / 'r'}",
               check=False)
    assert res.returncode == 2 and "block 0, view 1" in res.stderr


def test_empty_dataset_and_labels_out_of_range(base, tmp_path):
    out, cfg = base
    empty = tmp_path / "empty"
    empty.mkdir()
    for stem in ("train", "t10k"):
        write_idx(empty / f"{stem}-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
        write_idx(empty / f"{stem}-labels-idx1-ubyte.gz", np.zeros((0,), np.uint8))
    res = _cli("infer-teacher", str(cfg), "--set", f"data.data_dir={empty}", "--set", f"teacher.store={tmp_path / 's'}",
               check=False)
    assert res.returncode == 2 and "is empty" in res.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for stem in ("train", "t10k"):
        write_idx(bad / f"{stem}-images-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8))
        write_idx(bad / f"{stem}-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8))
    res = _cli("infer-teacher", str(cfg), "--set", f"data.data_dir={bad}", "--set", f"teacher.store={tmp_path / 's2'}",
               check=False)
    assert res.returncode == 2 and "labels 0..19 fall outside the 10 classes" in res.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "s2").exists()


def test_checkpoint_of_another_architecture(base, tmp_path):
    out, cfg = base
    res = _cli("train-student", str(cfg), "--set", f"model.pretrained={out / 'teacher' / 'model.safetensors'}",
               "--set", f"run.output={tmp_path / 'r'}", check=False)
    assert res.returncode == 2
    assert "shape mismatch at 'head.weight': checkpoint (10, 784), model (10, 64)" in res.stderr


def test_unwritable_output_directory(base, tmp_path):
    out, cfg = base
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = _cli("train-student", str(cfg), "--set", f"run.output={blocker / 'run'}", check=False)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert blocker.read_text() == "not a directory"


def test_full_disk_leaves_previous_checkpoint_intact(base, tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC) leaves no temporary file and the old file untouched."""
    import errno

    import torch

    from pipeline.engine.checkpoint import save_state

    path = tmp_path / "state.pt"
    save_state(path, {"epoch": 1})
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError):
        save_state(path, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_second_run_in_the_same_directory_is_refused(base, tmp_path):
    out, cfg = base
    run = tmp_path / "busy"
    with RunLock(run):
        res = _cli("train-student", str(cfg), "--set", f"run.output={run}", check=False)
    assert res.returncode == 2 and "in use by another run" in res.stderr
    assert not (run / "config.yaml").exists()


def test_deterministic_runs_repeat_exactly(base, tmp_path):
    out, cfg = base
    for name in ("a", "b"):
        _cli("train-student", str(cfg), "--deterministic", "--set", "optim.epochs=2", "--set", "model.name=fmnist_cnn", "--set", "model.kwargs={}",
             "--set", "model.kwargs={width: 4}", "--set", f"run.output={tmp_path / name}")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_store_at_an_fsspec_url(base, tmp_path):
    out, cfg = base
    url = f"file://{tmp_path / 'remote' / 'store'}"
    _cli("infer-teacher", str(cfg), "--set", f"teacher.store={url}")
    res = _cli("train-student", str(cfg), "--set", f"teacher.store={url}", "--set", "optim.epochs=1",
               "--set", f"run.output={tmp_path / 'r'}")
    assert json.loads(res.stdout.splitlines()[-1])["teacher_mode"] == "store"
    a, b = SoftLabelStore.open(out / "store"), SoftLabelStore.open(url)
    np.testing.assert_array_equal(a.group["logits"][:], b.group["logits"][:])
