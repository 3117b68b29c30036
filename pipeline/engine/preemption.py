"""Stop a run cleanly when its scheduler asks: at the next step boundary, with a step checkpoint.

A cluster scheduler warns a job before it preempts it or its time runs out (SLURM sends SIGUSR2
``signal_delay_s`` seconds ahead through submitit's ``--signal``). A signal can land anywhere inside
a step, where the weights, optimizer and counters disagree, so the handler only sets a flag
(:func:`request_stop`); the run loop looks at it after every step and, when set, writes a step
checkpoint from a consistent state and raises :class:`Preempted`. Under torchrun/DDP every rank
learns of the request through one all-reduce, so they all stop at the same step. The launcher that
installed the handler then requeues the job, and the requeued job resumes exactly where it stopped.
"""
from __future__ import annotations

import threading

import torch
import torch.distributed as torch_dist

_REQUESTED = threading.Event()
_ARMED = threading.Event()  # only a launcher that can requeue arms it: plain runs skip the per-step check


class Preempted(Exception):
    """The run stopped at a step boundary after writing a step checkpoint; ``--resume`` continues it."""


def arm() -> None:
    """Check for stop requests after every step (a launcher that handles the scheduler's signal calls this)."""
    _ARMED.set()
    _REQUESTED.clear()


def request_stop(*_: object) -> None:
    """Ask the running loop to stop at its next step boundary (usable directly as a signal handler)."""
    _REQUESTED.set()


def stop_requested(world: int, device: torch.device) -> bool:
    """Whether any rank was asked to stop (always False unless :func:`arm` was called)."""
    if not _ARMED.is_set():
        return False
    flag = torch.tensor([1.0 if _REQUESTED.is_set() else 0.0], device=device)
    if world > 1:
        torch_dist.all_reduce(flag)  # every rank stops at the same step, or none does
    return bool(flag.item() > 0)
