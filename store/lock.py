"""The store's writer lock: one process writes a store at a time, wherever the store lives.

- A local path: an exclusive ``flock`` on ``.<name>/.lock`` beside the store. The kernel drops it when
  its process dies, so only a live process ever holds it; the file names the holder (pid, host).
- An fsspec URL (``memory://``, ``s3://``, ``file://``, ...): a lease, the object
  ``.<name>/lease.<generation>.json`` beside the store, created exclusively (``open(mode="xb")``:
  ``O_EXCL`` for local files, a conditional write on object stores that support it), holding the
  owner's host, pid and last heartbeat. The holder rewrites it every ``ttl_s / 4`` seconds; a lease
  whose heartbeat is older than its ``ttl_s`` (:data:`LEASE_TTL_S` = 60 s unless the holder chose
  another), or whose holder is a dead process of this machine, is stale: the next writer takes it
  over by creating the next generation, which only one process can do, so a crashed holder blocks
  others for at most ``ttl_s``. Releasing marks the lease released (generations only grow, so
  two writers can never both create the newest one). The machines' clocks must agree to well
  within ``ttl_s``. A ``file://`` URL takes the flock too, so it also excludes a writer that names
  the same store by its plain path.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import fsspec

from store.chunks import StoreError

LEASE_TTL_S = 60.0
_LEASE_NAME = re.compile(r"lease\.(\d+)\.json$")
_CREATE = threading.Lock()  # in-process filesystems (memory://) check-then-create: serialize this process's creates


class StoreBusy(StoreError):
    """Another live process holds the store's writer lock (not a failure: the store is being written elsewhere)."""


def writer_lock(path: str, ttl_s: float = LEASE_TTL_S) -> AbstractContextManager[Any]:
    """The writer lock of the store at ``path`` (a local path or an fsspec URL); raises :class:`StoreBusy` if held."""
    if "://" not in path:
        return FlockLock(path)
    if path.startswith("file://"):
        return _flock_and_lease(path, ttl_s)
    return LeaseLock(path, ttl_s)


def writer_lock_held(path: str) -> bool:
    """Whether a live writer holds the lock of the store at ``path`` now (a stale lease does not count)."""
    if "://" not in path:
        return FlockLock.held(path)
    return (path.startswith("file://") and FlockLock.held(path)) or LeaseLock(path).held()


@contextmanager
def _flock_and_lease(path: str, ttl_s: float) -> Iterator[None]:
    with FlockLock(path), LeaseLock(path, ttl_s):
        yield


def _lock_dir(path: str) -> Path:
    """``.<name>`` beside a local store (a plain path or a ``file://`` URL)."""
    p = Path(path.removeprefix("file://"))
    return p.parent / f".{p.name}"


class FlockLock:
    """An exclusive ``flock`` on ``.<name>/.lock`` beside a local store, naming its holder inside."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.path = _lock_dir(store) / ".lock"
        self.handle: IO[str] | None = None

    def __enter__(self) -> "FlockLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreBusy(f"store {self.store} is being written by {holder} (lock {self.path}); wait for it "
                            "to finish (the lock goes with that process), or write another teacher.store") from exc
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    @staticmethod
    def held(store: str) -> bool:
        """Whether a live process holds the lock of ``store`` now."""
        return flock_held(_lock_dir(store) / ".lock")


def flock_held(path: Path) -> bool:
    """Whether a live process holds an exclusive ``flock`` on the file ``path`` now (probed, not taken)."""
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class LeaseLock:
    """A heartbeat lease beside a store at an fsspec URL (see the module docstring for the protocol)."""

    def __init__(self, store: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.fs, root = fsspec.core.url_to_fs(store)
        parent, _, name = root.rstrip("/").rpartition("/")
        self.dir = f"{parent}/.{name}"
        self.token = uuid.uuid4().hex
        self.generation = -1
        self.lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "LeaseLock":
        self.fs.makedirs(self.dir, exist_ok=True)
        with _CREATE:
            top = self._newest()
            record = self._read(top) if top >= 0 else None
            if record is not None and not self._free(record):
                raise self._busy(top, record)
            gen = top + 1
            try:
                with self.fs.open(self._path(gen), "xb") as f:
                    f.write(self._record(time.time()))
            except FileExistsError:  # another writer created this generation first
                raise self._busy(gen, self._read(gen)) from None
            newest = self._newest()
            if newest != gen:  # our listing was old: a newer lease exists, so ours never counted
                self.fs.rm_file(self._path(gen))
                raise self._busy(newest, self._read(newest))
        self.generation = gen
        for old in self._generations():
            if old < gen:
                try:
                    self.fs.rm_file(self._path(old))
                except FileNotFoundError:
                    pass
        self._beat = threading.Thread(target=self._heartbeat, name=f"store-lease {self.store}", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if not self.lost and self._newest() == self.generation:
            self._put(self._path(self.generation), self._record(time.time(), released=True))
        elif exc_type is None:
            raise StoreBusy(f"store {self.store}: this process lost its writer lock "
                            f"{self.fs.unstrip_protocol(self._path(self.generation))} "
                            "(no heartbeat for longer than its timeout), so another writer may have written too; "
                            "run `w2s infer-teacher CONFIG --repair` to check every chunk")

    def held(self) -> bool:
        """Whether a live, unreleased lease is the newest one now."""
        top = self._newest()
        record = self._read(top) if top >= 0 else None
        return record is not None and not self._free(record)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if self._newest() != self.generation:
                    self.lost = True
                    return
                self._put(self._path(self.generation), self._record(time.time()))
            except OSError:  # a passing storage error: the next beat tries again within the timeout
                continue

    def _record(self, now: float, released: bool = False) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "node": _node(), "token": self.token,
                           "refreshed": now, "ttl_s": self.ttl_s, "released": released}).encode()

    def _put(self, path: str, data: bytes) -> None:
        """Replace ``path`` whole (write beside it, then move), so readers never see half a record."""
        tmp = f"{path}.{self.token}.tmp"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def _path(self, gen: int) -> str:
        return f"{self.dir}/lease.{gen}.json"

    def _generations(self) -> list[int]:
        self.fs.invalidate_cache(self.dir)
        try:
            names = self.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _LEASE_NAME.fullmatch(n.rsplit("/", 1)[-1])))

    def _newest(self) -> int:
        return max(self._generations(), default=-1)

    def _read(self, gen: int) -> dict[str, Any] | None:
        """The lease record of ``gen``; None if it is gone. An unreadable one (being created, or damaged)
        counts as refreshed when its file last changed, so it too goes stale after :data:`LEASE_TTL_S`."""
        path = self._path(gen)
        try:
            return dict(json.loads(self.fs.cat_file(path)))
        except FileNotFoundError:
            return None
        except ValueError:
            try:
                changed = self.fs.modified(path).timestamp()
            except FileNotFoundError:
                return None
            return {"refreshed": changed, "ttl_s": LEASE_TTL_S, "unreadable": True}

    def _free(self, record: dict[str, Any]) -> bool:
        """Released, no heartbeat within its timeout, or held by a dead process of this machine."""
        if record.get("released") or time.time() - float(record["refreshed"]) > float(record["ttl_s"]):
            return True
        node = record.get("node")
        return bool(node) and node == _node() and record["pid"] != os.getpid() and not _alive(int(record["pid"]))

    def _busy(self, gen: int, record: dict[str, Any] | None) -> StoreBusy:
        path = self.fs.unstrip_protocol(self._path(gen))
        if record is None or record.get("unreadable"):
            return StoreBusy(f"store {self.store} is locked by {path}, which another writer is creating or "
                             f"which is damaged; wait {LEASE_TTL_S:.0f} s for it to go stale, or delete it if "
                             "no process writes the store")
        age = time.time() - float(record["refreshed"])
        return StoreBusy(f"store {self.store} is being written by pid {record.get('pid')} on {record.get('host')} "
                         f"(lock {path}, last heartbeat {age:.0f} s ago); wait for it to finish: the lock is "
                         f"taken over {float(record['ttl_s']):g} s after its last heartbeat, or delete {path} "
                         "if that process is gone")


@functools.cache
def _node() -> str:
    """This machine's boot and pid namespace ('' where unknown): a pid names one process only within them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{socket.gethostname()}/{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
