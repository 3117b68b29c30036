"""Where a student's epoch comes from: the order, the views, the replay pipeline and the teacher's logits.

:class:`StudentData` is the data side of :class:`pipeline.train_student.Trainer` (a mixin over its
attributes: ``cfg``, ``dist``, ``policy``, ``teacher``, ``train_src``, ...). In store mode the
epoch's teacher logits and view params come from this rank's shard of the store, read one epoch
ahead (``store/shard_reader.py``); otherwise the view params are drawn from the policy.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np

from pipeline.data.loader import ViewReplayer, chunked_shard_batches, crop_size_for, epoch_order, shard_batches, stream
from pipeline.engine.run_loop import Epoch
from pipeline.engine.runtime import RunError
from store.shard_reader import ShardReader
from pipeline.student.specs import fresh_views
from pipeline.data.views import ViewPolicy, sample_params

READ_ORDERS = ("global", "chunked")
READ_BUFFERS = ("double", "bounded")
ParamsFn = Callable[[np.ndarray], np.ndarray]


class StudentData:
    """The epoch's batches, views and cached logits of a :class:`~pipeline.train_student.Trainer`."""

    cfg: Any
    dist: Any
    epochs: int
    policy: ViewPolicy
    teacher: Any
    train_src: Any
    store_rows: np.ndarray | None
    fresh: bool
    global_batch: int
    local_batch: int
    specs: list[Any]
    augment: Any
    labels: np.ndarray
    model: Any
    scheduler: Any
    shard_reader: ShardReader | None
    read_s: float

    def _shard_reader(self) -> ShardReader | None:
        """In store mode, the reader of this rank's rows of each epoch's view, one epoch ahead."""
        t, tc = self.teacher, self.cfg.teacher
        if t is None or t.store is None:
            return None
        if tc.read_order not in READ_ORDERS or tc.read_buffer not in READ_BUFFERS:
            raise RunError(f"teacher.read_order must be one of {', '.join(READ_ORDERS)} and teacher.read_buffer one of "
                           f"{', '.join(READ_BUFFERS)}, got {tc.read_order!r} / {tc.read_buffer!r}")
        if tc.read_order == "chunked" and self.store_rows is not None:
            raise RunError("teacher.read_order chunked needs the whole store to train (set data.val_fraction to 0)")
        bounded = tc.read_buffer == "bounded"
        return ShardReader(t.store, self._rows_for_epoch, epochs=self.epochs, index_to_row=self.store_rows,
                           free_consumed=bounded, read_ahead_at=0.8 if bounded else 0.0)

    def _epoch_view(self, epoch: int) -> tuple[ViewPolicy, int]:
        policy = self.policy.fresh(self.epochs) if self.fresh else self.policy
        return policy, policy.epoch_view(epoch, self.cfg.views.augmented)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of the epoch (the one place the order comes from, for the loop and the reader)."""
        seed, rank, world = self.cfg.run.seed, self.dist.rank, self.dist.world
        if self.cfg.teacher.read_order == "chunked" and self.shard_reader is not None:
            assert self.teacher is not None and self.teacher.store is not None
            return chunked_shard_batches(len(self.train_src), self.teacher.store.chunk_samples, self.global_batch,
                                         epoch, seed, rank, world)
        order = epoch_order(len(self.train_src), epoch, seed, shuffle=True)
        return shard_batches(order, self.global_batch, rank, world, drop_last=True)

    def _rows_for_epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """The epoch's view and this rank's store rows in consumption order (runs in the reader's thread)."""
        idx = np.concatenate(self.epoch_batches(epoch))
        return self._epoch_view(epoch)[1], idx if self.store_rows is None else self.store_rows[idx]

    def close(self) -> None:
        if getattr(self, "shard_reader", None) is not None:
            self.shard_reader.close()

    def _rows(self, array: np.ndarray) -> np.ndarray:
        """A store array (over the whole training selection) restricted to this run's training part."""
        return array if self.store_rows is None else array[self.store_rows]

    def _fresh_views(self) -> bool:
        """Whether epochs draw new views; with a store that needs a view per epoch (``K >= epochs``)."""
        store = self.teacher.store if self.teacher else None
        try:
            fresh = fresh_views(self.cfg, reads_store=store is not None)
        except ValueError as exc:
            raise RunError(str(exc)) from exc
        if fresh and store is not None and self.policy.kind != "none" and self.policy.num_views < self.epochs:
            raise RunError(f"views.sampling is fresh but the store holds {self.policy.num_views} augmented views "
                           f"for {self.epochs} epochs; write a store with views.num_views >= {self.epochs} or use cycle")
        return fresh

    def make_train_replayer(self, epoch: int) -> ViewReplayer:
        """The training pipeline; with DALI-side augmentation it is rebuilt per epoch from (seed, epoch, rank)."""
        seed = int(np.random.default_rng([self.cfg.run.seed, epoch, self.dist.rank]).integers(2**31))
        return ViewReplayer(self.train_src.image_hw, self.specs, self.local_batch,
                            crop_size_for(self.policy, self.train_src), self.cfg.run.device, self.cfg.run.num_threads,
                            decode=self.train_src.encoded, augment=self.augment, seed=seed)

    def epoch_sources(self, epoch: int) -> tuple[ParamsFn, ParamsFn | None]:
        """Where this epoch's view params and teacher logits come from (in store mode: this rank's shard)."""
        if self.shard_reader is not None:
            shard = self.shard_reader.get(epoch)
            return shard.params_of, shard.logits_of
        policy, view = self._epoch_view(epoch)
        src = self.train_src
        return (lambda idx: sample_params(policy, idx, view, src.sizes_of(idx))), None

    def epoch(self, epoch: int, start_step: int) -> Epoch:
        self.scheduler.step(epoch)  # a schedule stepped per epoch sets this epoch's lr; per update: no-op
        if epoch > 0 and self.augment.active:
            self.train_replayer = self.make_train_replayer(epoch)
        random.seed(hash((self.cfg.run.seed, epoch, self.dist.rank)))  # timm's RandomErasing draws from `random`
        start = time.perf_counter()
        params_of, logits_of = self.epoch_sources(epoch)
        self.read_s = time.perf_counter() - start
        batches = self.epoch_batches(epoch)
        self.model.train()
        if start_step and self.augment.active:  # DALI's random operators: replay the done batches to advance them
            for _ in stream(self.train_src, batches[:start_step], self.train_replayer, params_of, logits_of,
                            self.labels):
                pass
        return Epoch(len(batches), stream(self.train_src, batches[start_step:], self.train_replayer, params_of,
                                          logits_of, self.labels))
