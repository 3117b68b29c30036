"""Process setup shared by the commands: device, threads, seeding, torchrun ranks and run-directory locks."""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
from rich.console import Console

from pipeline.engine.resource_checks import check_threads
from store.lock import flock_held


def stderr_console() -> Console:
    """The console for progress and epoch lines, on stderr; off a terminal (logs, CI) lines never wrap."""
    return Console(stderr=True, soft_wrap=not sys.stderr.isatty())


class RunError(RuntimeError):
    """A run cannot start or continue; the message is one line for the user."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str, num_threads: int, seed: int, deterministic: bool = False) -> tuple[torch.device, Dist]:
    """Pick the device, join the torchrun group when launched by torchrun, and seed torch."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"run.device is {device!r} but no CUDA device is available; use --set run.device=cpu")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise RunError(f"run.device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if num_threads > 0:
        check_threads(num_threads)
        torch.set_num_threads(num_threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    torch.manual_seed(seed)
    return dev, Dist(rank, world, local)


def barrier(info: Dist) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.world > 1:
        dist.barrier()


def env_rank() -> int:
    """This process's torchrun rank before the process group exists (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def main_lock(directory: Path) -> "RunLock | contextlib.nullcontext[None]":
    """The run-directory lock, taken by rank 0 only (the other ranks never write there)."""
    return RunLock(directory) if env_rank() == 0 else contextlib.nullcontext()


def all_reduce_sum(values: list[float], device: torch.device, info: Dist) -> list[float]:
    """Sum a list of numbers over ranks (identity in a single process)."""
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class RunBusy(RunError):
    """The directory is locked by another live process (not a failure of this run: it is running elsewhere)."""


class RunLock:
    """An exclusive ``flock`` on ``<dir>/.lock`` so two runs never write one directory at once.

    The kernel drops a ``flock`` when its process dies, so a lock is only ever held by a live process."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self.handle: IO[str] | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.handle.close()
            raise RunBusy(f"{self.path.parent} is in use by another run (lock {self.path})") from exc
        return self

    @staticmethod
    def is_held(directory: Path) -> bool:
        """Whether a live process holds the lock of ``directory`` now."""
        return flock_held(directory / ".lock")

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
