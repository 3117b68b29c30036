"""The Store protocol, the backend registry, and the store's writer lock (flock beside a local store,
heartbeat lease beside one at a URL), down to infer-teacher refusing a second writer."""
from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import yaml

import store.backends as backends
from store.backends import create_store, open_store, store_backend, store_lock, store_lock_held
from store.chunks import StoreError
from store.lock import LeaseLock, StoreBusy, _node, writer_lock
from store.protocol import Store, StoreBackend
from store.soft_label_store import SoftLabelStore
from tests.cli_run import ok, one_line_failure

ROOT = Path(__file__).resolve().parents[2]


def _make(path: str) -> SoftLabelStore:
    return SoftLabelStore.create(path, num_samples=6, num_views=2, num_classes=3, param_dim=4, chunk_samples=4,
                                 labels=np.arange(6) % 3, attrs={"teacher": {"model": "t"}})


@pytest.fixture(params=["path", "file", "memory"])
def where(request, tmp_path) -> str:
    """A store location of each kind: a plain local path, a file:// URL, a memory:// URL."""
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return f"memory://{uuid.uuid4().hex}/store"


def _lease_dir(url: str) -> str:
    """Where a URL store's leases live: ``.<name>`` beside it."""
    parent, name = url.rsplit("/", 1)
    return f"{parent}/.{name}"


def test_soft_label_store_implements_the_protocols(tmp_path):
    s = _make(str(tmp_path / "store"))
    assert isinstance(s, Store)
    assert isinstance(open_store(tmp_path / "store"), Store)
    members = [n for n in vars(StoreBackend) if not n.startswith("_")] + list(StoreBackend.__annotations__)
    assert all(hasattr(SoftLabelStore, m) for m in members)
    assert s.param_dim == 4
    with s.lock():  # a store's own lock is the lock of its path
        assert store_lock_held(s.path)
    assert not store_lock_held(s.path)


def test_backend_is_picked_by_scheme_or_name(monkeypatch, tmp_path):
    monkeypatch.setattr(backends, "STORE_BACKENDS", dict(backends.STORE_BACKENDS))
    calls: list[tuple[str, str]] = []

    @backends.register_store_backend
    class FakeStore:
        name = "fake"
        schemes = ("fake",)

        def __init__(self, path: str) -> None:
            self.path = path

        @classmethod
        def open(cls, path, mode="r"):
            calls.append(("open", str(path)))
            return cls(str(path))

        @classmethod
        def create(cls, path, **kwargs):
            calls.append(("create", str(path)))
            return cls(str(path))

        @staticmethod
        def lock_at(path):
            calls.append(("lock", str(path)))
            return writer_lock(f"memory://fake-locks/{uuid.uuid4().hex}")

        @staticmethod
        def is_locked(path):
            return False

    assert isinstance(open_store("fake://db/teacher"), FakeStore)
    assert isinstance(create_store("fake://db/other", num_samples=1), FakeStore)
    with store_lock("fake://db/teacher"):
        pass
    assert calls == [("open", "fake://db/teacher"), ("create", "fake://db/other"), ("lock", "fake://db/teacher")]
    assert store_backend(tmp_path / "s") is SoftLabelStore  # the default: local paths and any fsspec URL
    assert store_backend("memory://x/s") is SoftLabelStore
    assert store_backend("fake://db/t", backend="zarr") is SoftLabelStore  # by name, whatever the scheme
    assert store_backend(tmp_path / "s", backend="fake") is FakeStore
    with pytest.raises(StoreError, match="unknown store backend 'nope'; registered: zarr, fake"):
        store_backend("x", backend="nope")


def test_store_package_stands_alone():
    """store/ never imports the pipeline, the CLI or torch (other tools read stores without them)."""
    for path in (ROOT / "store").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("pipeline", "cli", "torch"), f"{path.name} imports {name}"
    code = ("import sys, store.backends, store.lock, store.protocol, store.shard_reader, store.inspect; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'pipeline', 'cli')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_lock_is_exclusive_and_names_its_holder(where):
    with store_lock(where):
        assert store_lock_held(where)
        with pytest.raises(StoreBusy, match=f"being written by pid {os.getpid()} on {socket.gethostname()}") as exc:
            with store_lock(where):
                pass
        assert "wait for it to finish" in str(exc.value) and "\n" not in str(exc.value)
    assert not store_lock_held(where)
    with store_lock(where):  # released: the next writer gets it
        pass


def test_local_lock_sits_beside_the_store(tmp_path):
    with store_lock(str(tmp_path / "store")):
        assert (tmp_path / ".store" / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    with store_lock(f"file://{tmp_path / 'store'}"):  # a file:// URL leases and takes the same flock
        assert (tmp_path / ".store" / "lease.0.json").exists()
        with pytest.raises(StoreBusy):
            with store_lock(str(tmp_path / "store")):
                pass


def test_racing_writers_one_wins(where):
    assert _race(where) == 1


def _race(where: str, n: int = 6) -> int:
    """How many of ``n`` writers starting at once got the lock (each of the others must get StoreBusy)."""
    start, done = threading.Barrier(n), threading.Event()
    got: list[int] = []
    busy: list[int] = []

    def writer(i: int) -> None:
        lock = store_lock(where)  # a lock object of its own, as another process would have
        start.wait()
        try:
            with lock:
                got.append(i)
                done.wait(10)
        except StoreBusy:
            busy.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while len(got) + len(busy) < n and time.time() < deadline:
        time.sleep(0.01)
    done.set()
    for t in threads:
        t.join()
    assert len(got) + len(busy) == n
    return len(got)


@pytest.fixture(params=["file", "memory"])
def url(request, tmp_path) -> str:
    return f"file://{tmp_path / 'store'}" if request.param == "file" else f"memory://{uuid.uuid4().hex}/store"


def _plant_lease(url: str, **record) -> None:
    """A lease as another writer would have left it (generation 0)."""
    fs, root = fsspec.core.url_to_fs(_lease_dir(url))
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/lease.0.json", json.dumps({"host": "elsewhere", "pid": 4242, "node": "other",
                                                     "token": "t", "ttl_s": 60.0, "released": False, **record}).encode())


def test_heartbeat_keeps_a_lease_and_its_staleness_frees_it(url):
    _plant_lease(url, refreshed=time.time() - 5)  # another machine, within its 60 s
    with pytest.raises(StoreBusy, match=r"pid 4242 on elsewhere .*last heartbeat 5 s ago.*taken over 60 s after .*"
                                        r"or delete .*lease\.0\.json if that process is gone"):
        with LeaseLock(url):
            pass
    _plant_lease(url, refreshed=time.time() - 61)  # that machine crashed: its lease went stale
    with LeaseLock(url, ttl_s=0.3) as lock:
        assert lock.generation == 1
        fs, root = fsspec.core.url_to_fs(_lease_dir(url))
        assert [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if p.endswith(".json")] == ["lease.1.json"]
        time.sleep(1.0)  # several timeouts: the heartbeat keeps it
        assert store_lock_held(url)
        with pytest.raises(StoreBusy, match=f"pid {os.getpid()}"):
            with LeaseLock(url):
                pass
    assert not store_lock_held(url)


def test_racing_takeovers_of_a_stale_lease_one_wins(url):
    _plant_lease(url, refreshed=time.time() - 61)
    assert _race(url) == 1


def test_dead_holder_on_this_machine_is_taken_over_at_once(url):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _plant_lease(url, refreshed=time.time(), pid=gone.pid, node=_node())
    with LeaseLock(url) as lock:
        assert lock.generation == 1


def test_a_killed_process_does_not_block_the_store(tmp_path):
    """Another process holds a file:// store's lock; after it is killed the next writer gets it at once."""
    url = f"file://{tmp_path / 'store'}"
    code = (f"import time; from store.lock import writer_lock; lock = writer_lock({url!r}); lock.__enter__(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match=f"pid {holder.pid} on"):
            with store_lock(url):
                pass
        assert store_lock_held(url)
    finally:
        holder.kill()
        holder.wait()
    with store_lock(url):
        pass


def test_a_holder_that_lost_its_lease_says_so(url, monkeypatch):
    monkeypatch.setattr(LeaseLock, "_heartbeat", lambda self: None)  # a holder paused past its timeout
    paused = LeaseLock(url, ttl_s=0.2).__enter__()
    monkeypatch.undo()
    time.sleep(0.3)
    with LeaseLock(url) as taker:
        with pytest.raises(StoreBusy, match="lost its writer lock .*--repair"):
            paused.__exit__(None, None, None)
        assert taker.held()


@pytest.fixture(scope="module")
def teacher_cfg(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store_protocol")
    cfg = {"data": {"source": "fashion_mnist", "data_dir": str(fmnist_dir), "limit": 200, "test_limit": 100},
           "views": {"kind": "pad_crop", "num_views": 1},
           "model": {"name": "fmnist_linear"},
           "teacher": {"checkpoint": str(out / "teacher"), "chunk_samples": 100},
           "objective": {"name": "vanilla"},
           "optim": {"epochs": 1, "batch_size": 50, "eval_batch_size": 100},
           "run": {"output": str(out / "teacher"), "num_threads": 1}}
    path = out / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ok(["train-teacher", str(path)])
    return path


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_infer_teacher_refuses_a_second_writer(teacher_cfg, tmp_path, kind):
    store = str(tmp_path / "store") if kind == "path" else f"memory://{uuid.uuid4().hex}/store"
    args = ["infer-teacher", str(teacher_cfg), "--set", f"teacher.store={store}"]
    with store_lock(store):
        one_line_failure(args, f"store {store} is being written by pid {os.getpid()}", "wait for it to finish")
    assert not SoftLabelStore.exists(store)
    ok(args)  # the lock released, the same command writes the store
    assert open_store(store).is_complete and not store_lock_held(store)
