"""Stopping a training run at the first sign of divergence, keeping the last good checkpoint.

The run loop (``pipeline.engine.run_loop``) reads every step's loss on the host already (its tasks
return it with the step's metrics); it hands it to
:func:`check_step`, which raises :class:`~pipeline.engine.runtime.RunError` at the first non-finite loss,
naming the epoch and step the way the epoch lines do (1-based, ``epoch 2/10, step 5/40``), and at the
first finite loss that has exploded (:class:`LossWatch`: over 1e4 x the first step's). With
fp16 AMP a step skipped by the gradient scaler (inf/nan gradients, the scale is halved) is normal;
:data:`MAX_SKIPPED_STEPS` of them in a row is not, and stops the run too. Before an epoch's
checkpoint is written, :func:`weights_finite` makes sure it holds no non-finite weight.

Raising before the epoch checkpoint leaves ``checkpoints/state.pt`` (and ``metrics.jsonl``) as the last
completed epoch wrote them, so the run stays resumable; no ``result.json`` is written.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.engine.runtime import Dist, RunError, all_reduce_sum

MAX_SKIPPED_STEPS = 20  # consecutive fp16 steps skipped by the gradient scaler before the run is stopped
EXPLODED_FACTOR = 1e4  # a finite loss this many times the first step's (at least LOSS_FLOOR) has exploded
LOSS_FLOOR = 0.1


def kept(epoch: int, epochs: int) -> str:
    """What is left on disk when epoch ``epoch`` (0-based) fails."""
    if epoch == 0:
        return "no checkpoint was written"
    return f"the checkpoint of epoch {epoch}/{epochs} is kept"


class SkippedSteps:
    """Consecutive optimizer steps skipped by an fp16 ``GradScaler``: ``update()`` skips its step and lowers its scale.

    Create it once the scaler is set up (after a resume's ``load_state_dict``) and call :meth:`update`
    after every step; one host read of the scale per step, none without fp16.
    """

    def __init__(self, scaler: torch.amp.GradScaler | None) -> None:
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.run = 0
        self.scale = self.scaler.get_scale() if self.scaler is not None else 0.0

    def update(self) -> None:
        """Call after the step's ``scaler.update()``; the scale only goes down when that step was skipped."""
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.run = self.run + 1 if scale < self.scale else 0
            self.scale = scale

    @property
    def too_many(self) -> bool:
        return self.run >= MAX_SKIPPED_STEPS


class LossWatch:
    """Whether a finite loss has exploded: above :data:`EXPLODED_FACTOR` x the first step's loss of this process.

    The first step's loss comes from the weights the process started with (initial or resumed), before
    any update of its own, so it does not depend on the lr; ``optim.lr=1e30`` gives 2.3 there and 1e31
    one step later.
    """

    def __init__(self) -> None:
        self.first: float | None = None

    def exploded(self, loss: float) -> bool:
        if self.first is None:
            self.first = abs(loss) if math.isfinite(loss) else LOSS_FLOOR
            return False
        return math.isfinite(loss) and abs(loss) > EXPLODED_FACTOR * max(self.first, LOSS_FLOOR)


def check_step(loss: float, skipped: SkippedSteps | None, epoch: int, epochs: int, step: int, steps: int,
               device: torch.device, dist: Dist | None = None, lr_key: str = "optim.lr",
               watch: LossWatch | None = None) -> None:
    """RunError at a non-finite or exploded ``loss`` or too many skipped fp16 steps; with several ranks all agree.

    ``epoch``/``step`` are 0-based and printed 1-based. Across ranks the two flags are summed (one tiny
    all-reduce per step, only when ``dist.world > 1``) so every rank stops at the same step and none hangs.
    """
    bad_loss = 0.0 if math.isfinite(loss) and not (watch is not None and watch.exploded(loss)) else 1.0
    bad_skip = 1.0 if skipped is not None and skipped.too_many else 0.0
    world = dist.world if dist is not None else 1
    if world > 1:
        assert dist is not None
        bad_loss, bad_skip = all_reduce_sum([bad_loss, bad_skip], device, dist)
    if not (bad_loss or bad_skip):
        return
    where = f"epoch {epoch + 1}/{epochs}, step {step + 1}/{steps}"
    if bad_loss:
        if not math.isfinite(loss):
            value = f"loss {loss}"
        elif watch is not None and watch.first is not None and abs(loss) > EXPLODED_FACTOR * max(watch.first, LOSS_FLOOR):
            value = f"loss {loss:.3g}, over {EXPLODED_FACTOR:g} x the first step's {watch.first:.3g}"
        else:
            value = f"loss not finite or exploded on {int(bad_loss)} of {world} processes"
        raise RunError(f"training diverged at {where} ({value}); stopped, {kept(epoch, epochs)} "
                       f"(lower {lr_key} or check the data)")
    assert skipped is not None and skipped.scaler is not None
    raise RunError(f"{MAX_SKIPPED_STEPS} consecutive fp16 steps skipped for inf/nan gradients at {where} "
                   f"(loss scale {skipped.scaler.get_scale():g}); stopped, "
                   f"{kept(epoch, epochs)} (try run.amp=bf16 or a lower {lr_key})")


def weights_finite(*modules: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``modules`` is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True


def check_weights(modules: list[nn.Module], epoch: int, epochs: int, device: torch.device,
                  dist: Dist | None = None, lr_key: str = "optim.lr") -> None:
    """RunError when an epoch ended with non-finite weights (so its checkpoint is never written)."""
    bad = 0.0 if weights_finite(*modules) else 1.0
    if dist is not None and dist.world > 1:
        (bad,) = all_reduce_sum([bad], device, dist)
    if bad:
        raise RunError(f"training diverged in epoch {epoch + 1}/{epochs}: the weights are not finite at its end; "
                       f"stopped, {kept(epoch, epochs)} (lower {lr_key} or check the data)")
