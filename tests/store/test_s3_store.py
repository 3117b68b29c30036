"""A store at an ``s3://`` URL through a real S3 endpoint (moto's server, ``tests/s3_server.py``): infer-teacher
writes it, train-student and inspect read it as they read a local store; the integrity checks refuse the
same damage with the same lines; the writer lease holds against other processes."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from safetensors.numpy import load_file

from store.backends import store_lock, store_lock_held
from store.lock import LeaseLock, StoreBusy
from store.soft_label_store import SoftLabelStore
from tests.cli_run import fails, invoke, ok
from tests.conftest import ROOT
from tests.helpers import trained_teacher, w2s
from tests.s3_server import S3Server
from tests.store.test_store_protocol import _lease_dir, _plant_lease

ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL")


@pytest.fixture(scope="module")
def stores(s3, fmnist_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    """A trained teacher's config and its store written with the same settings twice: at a local path, and at
    an s3 URL by ``w2s infer-teacher`` in a child process given the server's environment (no code or config)."""
    out = tmp_path_factory.mktemp("s3_store")
    cfg = trained_teacher(out, fmnist_dir, data={"limit": 256, "test_limit": 100}, teacher={"chunk_samples": 64},
                          optim={"batch_size": 64, "eval_batch_size": 100})
    url = s3.url(uuid.uuid4().hex, "store")
    w2s("infer-teacher", str(cfg), "--set", f"teacher.store={url}", env={**os.environ, **s3.env}, check=True)
    ok(["infer-teacher", str(cfg)])
    return cfg, out / "store", url


def _student(cfg: Path, store: str, run: Path) -> dict:
    return ok(["train-student", str(cfg), "--set", f"teacher.store={store}", "--set", f"run.output={run}",
               "--set", "objective.name=kd"])


def test_student_reads_an_s3_store_as_it_reads_a_local_one(stores, tmp_path):
    cfg, local, url = stores
    a, b = SoftLabelStore.open(url), SoftLabelStore.open(local)
    assert a.is_complete and a.verify() == []
    for name in ("logits", "view_params", "labels", "chunk_crc"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])
    from_s3, from_local = _student(cfg, url, tmp_path / "s3"), _student(cfg, str(local), tmp_path / "local")
    assert from_s3["test_acc"] == from_local["test_acc"]
    ws, wl = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("s3", "local"))
    assert ws.keys() == wl.keys() and all(np.array_equal(ws[k], wl[k]) for k in ws)
    shown = invoke(["inspect", url, "--verify"])
    assert shown.exit_code == 0 and "status complete" in shown.output and "all chunks verified" in shown.output
    same = invoke(["inspect", str(local), "--verify"]).output.replace(str(local), "STORE")
    assert shown.output.replace(url, "STORE") == same


@pytest.mark.parametrize("var", ENDPOINT_VARS)
def test_each_endpoint_variable_reaches_the_server(s3, stores, var):
    """Any one of the documented variables points a process without the others at the endpoint."""
    _, _, url = stores
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS} | {var: s3.endpoint}
    code = f"from store.soft_label_store import SoftLabelStore; print(SoftLabelStore.open({url!r}).num_samples)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "256", res.stderr[-2000:]


def _copies(stores: tuple[Path, Path, str], s3: S3Server, tmp_path: Path) -> dict[str, str]:
    """A copy of the local store and one of the s3 store, each of which a test may damage."""
    _, local, url = stores
    shutil.copytree(local, tmp_path / "store")
    copy = s3.url(uuid.uuid4().hex, "store")
    fs, root = fsspec.core.url_to_fs(url)
    fs.copy(root, fsspec.core.url_to_fs(copy)[1], recursive=True)
    return {"local": str(tmp_path / "store"), "s3": copy}


def _refusals(cfg: Path, store: str, run: Path, inspect_pattern: str, train_pattern: str) -> list[str]:
    """The lines ``inspect --verify`` and ``train-student`` end in, the store's path written STORE."""
    lines = [fails(["inspect", store, "--verify"], inspect_pattern),
             fails(["train-student", str(cfg), "--set", f"teacher.store={store}", "--set", f"run.output={run}",
                    "--set", "objective.name=kd"], train_pattern)]
    return [line.replace(store, "STORE") for line in lines]


@pytest.mark.parametrize("value,pattern", [(1e12, "num_samples"), (10 ** 12, "array logits has shape")])
def test_an_edited_attribute_is_refused_in_the_same_line(s3, stores, tmp_path, value, pattern):
    cfg = stores[0]
    lines = {}
    for kind, store in _copies(stores, s3, tmp_path).items():
        fs, root = fsspec.core.url_to_fs(store)
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
        meta["attributes"]["num_samples"] = value
        fs.pipe_file(f"{root}/zarr.json", json.dumps(meta).encode())
        lines[kind] = _refusals(cfg, store, tmp_path / kind, pattern, f"store {store}")
    assert lines["s3"] == lines["local"]
    assert all(len(line) < 400 for line in lines["s3"]) and "infer-teacher" in lines["s3"][0]


def test_a_corrupt_chunk_is_refused_in_the_same_line(s3, stores, tmp_path):
    cfg = stores[0]
    lines = {}
    for kind, store in _copies(stores, s3, tmp_path).items():
        fs, root = fsspec.core.url_to_fs(store)
        chunk = f"{root}/logits/c/1/1/0"  # as tests.helpers.corrupt_chunk: one byte in the middle XOR 0x5A
        raw = bytearray(fs.cat_file(chunk))
        raw[len(raw) // 2] ^= 0x5A
        fs.pipe_file(chunk, bytes(raw))
        assert invoke(["inspect", store, "--verify"]).exit_code == 1
        lines[kind] = _refusals(cfg, store, tmp_path / kind, "block 1, view 1", "view 1")
    assert lines["s3"] == lines["local"]


HOLDER = ("import sys, time; from store.lock import writer_lock; writer_lock(sys.argv[1]).__enter__(); "
          "print('held', flush=True); time.sleep(60)")


def _line(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The next line ``proc`` prints, waiting at most ``timeout`` s for it."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from pid {proc.pid} within {timeout:g} s"
    return proc.stdout.readline().strip()


def _end(procs: list[subprocess.Popen]) -> None:
    """Close the pipes of ``procs`` and wait for them (killed if they linger)."""
    for p in procs:
        for pipe in (p.stdin, p.stdout):
            if pipe is not None:
                pipe.close()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_a_second_writer_is_refused_and_a_killed_one_taken_over_at_once(s3):
    url = s3.url(uuid.uuid4().hex, "store")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert _line(holder) == "held"
        with pytest.raises(StoreBusy, match=f"store {url} is being written by pid {holder.pid} on .*lease\\.0\\.json"):
            with store_lock(url):
                pass
        assert store_lock_held(url)
    finally:
        holder.kill()
        _end([holder])
    with LeaseLock(url) as lock:  # a dead process of this machine holds no lease
        assert lock.generation == 1
    assert not store_lock_held(url)


def test_a_stale_lease_is_taken_over_and_a_heartbeat_keeps_one(s3):
    url = s3.url(uuid.uuid4().hex, "store")
    _plant_lease(url, refreshed=time.time() - 5)  # another machine, within its 60 s
    with pytest.raises(StoreBusy, match=r"pid 4242 on elsewhere .*last heartbeat 5 s ago"):
        with LeaseLock(url):
            pass
    _plant_lease(url, refreshed=time.time() - 61)  # that machine went away: its lease is stale
    with LeaseLock(url, ttl_s=1.0) as lock:
        assert lock.generation == 1
        fs, root = fsspec.core.url_to_fs(_lease_dir(url))
        assert [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)] == ["lease.1.json"]
        began = json.loads(fs.cat_file(f"{root}/lease.1.json"))["refreshed"]
        time.sleep(1.5)  # longer than its timeout: the heartbeat (every 0.25 s) renews it
        assert json.loads(fs.cat_file(f"{root}/lease.1.json"))["refreshed"] > began and not lock.lost
        assert store_lock_held(url)
    assert not store_lock_held(url)


# Each racer, once told to go: creates keys PREFIX/k0..k19 with open(mode="xb"), then takes the store's lease.
RACER = """
import json, sys
import fsspec
from store.lock import LeaseLock, StoreBusy
prefix, url = sys.argv[1:]
fs = fsspec.filesystem("s3")
lock = LeaseLock(url)
fs.ls(prefix.split("/")[0])  # connected before the start
print("ready", flush=True)
sys.stdin.readline()
won = []
for k in range(20):
    try:
        with fs.open(f"{prefix}/k{k}", "xb") as f:
            f.write(str(k).encode())
        won.append(k)
    except FileExistsError:
        pass
try:
    lock.__enter__()
    lease = lock.generation
except StoreBusy:
    lease = None
print(json.dumps({"won": won, "lease": lease}), flush=True)
sys.stdin.readline()
"""


def test_racing_processes_one_create_wins(s3):
    """s3fs's open(mode="xb") is a conditional put (If-None-Match: *): of processes creating one key at once
    exactly one succeeds; so of processes starting a writer at once exactly one gets the lease."""
    prefix, url = f"{s3.bucket}/{uuid.uuid4().hex}", s3.url(uuid.uuid4().hex, "store")
    racers = [subprocess.Popen([sys.executable, "-c", RACER, prefix, url], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        assert [_line(r) for r in racers] == ["ready"] * len(racers)
        for r in racers:
            r.stdin.write("go\n")
            r.stdin.flush()
        results = [json.loads(_line(r)) for r in racers]
    finally:
        _end(racers)
    winners = sorted(k for res in results for k in res["won"])
    assert winners == list(range(20))
    assert [res["lease"] for res in results].count(0) == 1 and [res["lease"] for res in results].count(None) == 3
