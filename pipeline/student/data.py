"""Where a student's epoch comes from: the order, the views, the replay pipeline and the teacher's logits.

:class:`StudentData` is the data side of :class:`pipeline.train_student.Trainer`. In store mode
(a :class:`StoreFeed`) the epoch's teacher logits and view params come from this rank's shard of
the store, read one epoch ahead (``store/shard_reader.py``); otherwise the view params are drawn
from the policy.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.config.schema import Config, RunConfig
from pipeline.data.loader import (LogitsFn, ParamsFn, ViewReplayer, chunked_shard_batches, crop_size_for, epoch_order,
                                  shard_batches, stream)
from pipeline.data.sources.base import Source
from pipeline.data.timm_augment import StudentAugment
from pipeline.data.views import InputSpec, ViewPolicy, sample_params
from pipeline.engine.run_loop import Epoch
from pipeline.engine.runtime import Dist, RunError
from pipeline.student.specs import fresh_views
from store.protocol import Store
from store.shard_reader import ShardReader


@dataclass(frozen=True, eq=False)
class StoreFeed:
    """A teacher store that a run replays: the store, the run's rows in it, and how they are read.

    ``rows`` maps the training part's indices to store rows (None: the store's rows are the training
    rows); ``read_order`` and ``read_buffer`` are ``teacher.read_order`` / ``teacher.read_buffer``.
    """

    store: Store
    rows: np.ndarray | None
    read_order: str
    read_buffer: str

    def labels(self) -> np.ndarray:
        """The labels the teacher saw (e.g. noisy ones), restricted to the training part."""
        labels = self.store.labels()
        return labels if self.rows is None else labels[self.rows]


def fresh_epoch_views(cfg: Config, feed: StoreFeed | None, policy: ViewPolicy, epochs: int) -> bool:
    """Whether epochs draw new views (``views.sampling``); from a store, that needs a view per epoch (K >= epochs)."""
    fresh = fresh_views(cfg, reads_store=feed is not None)
    if fresh and feed is not None and policy.kind != "none" and policy.num_views < epochs:
        raise RunError(f"views.sampling is fresh but the store holds {policy.num_views} augmented views "
                       f"for {epochs} epochs; write a store with views.num_views >= {epochs} or use cycle")
    return fresh


@dataclass(eq=False)
class StudentData:
    """The epoch's batches, views and cached logits of a :class:`~pipeline.train_student.Trainer`.

    ``source`` is the training part and ``labels`` its training labels; ``specs`` the inputs each
    replayed batch carries (the student's, and an online teacher's); ``fresh`` whether epochs draw new
    views, ``augmented`` whether they replay augmented ones (``views.augmented``); ``run`` gives the
    seed, device and threads of the replay pipeline. Building it makes the store's shard reader
    (which reads nothing before the first epoch) and epoch 0's replayer.
    """

    source: Source
    labels: np.ndarray
    policy: ViewPolicy
    specs: list[InputSpec]
    augment: StudentAugment
    feed: StoreFeed | None
    dist: Dist
    run: RunConfig
    epochs: int
    global_batch: int
    local_batch: int
    fresh: bool
    augmented: bool
    shard_reader: ShardReader | None = field(init=False)
    train_replayer: ViewReplayer = field(init=False)
    read_s: float = field(init=False, default=0.0)  # seconds the epoch's store read took

    def __post_init__(self) -> None:
        self.shard_reader = self._shard_reader()
        self.train_replayer = self.make_train_replayer(0)

    def _shard_reader(self) -> ShardReader | None:
        """In store mode, the reader of this rank's rows of each epoch's view, one epoch ahead."""
        feed = self.feed
        if feed is None:
            return None
        if feed.read_order == "chunked" and feed.rows is not None:
            raise RunError("teacher.read_order chunked needs the whole store to train (set data.val_fraction to 0)")
        bounded = feed.read_buffer == "bounded"
        return ShardReader(feed.store, self._rows_for_epoch, epochs=self.epochs, index_to_row=feed.rows,
                           free_consumed=bounded, read_ahead_at=0.8 if bounded else 0.0)

    def _epoch_view(self, epoch: int) -> tuple[ViewPolicy, int]:
        policy = self.policy.fresh(self.epochs) if self.fresh else self.policy
        return policy, policy.epoch_view(epoch, self.augmented)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of the epoch (the one place the order comes from, for the loop and the reader)."""
        seed, rank, world = self.run.seed, self.dist.rank, self.dist.world
        if self.feed is not None and self.feed.read_order == "chunked":
            return chunked_shard_batches(len(self.source), self.feed.store.chunk_samples, self.global_batch,
                                         epoch, seed, rank, world)
        order = epoch_order(len(self.source), epoch, seed, shuffle=True)
        return shard_batches(order, self.global_batch, rank, world, drop_last=True)

    def _rows_for_epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """The epoch's view and this rank's store rows in consumption order (runs in the reader's thread)."""
        assert self.feed is not None
        idx = np.concatenate(self.epoch_batches(epoch))
        return self._epoch_view(epoch)[1], idx if self.feed.rows is None else self.feed.rows[idx]

    def close(self) -> None:
        """Stop the store's background read."""
        if self.shard_reader is not None:
            self.shard_reader.close()

    def make_train_replayer(self, epoch: int) -> ViewReplayer:
        """The training pipeline; with DALI-side augmentation it is rebuilt per epoch from (seed, epoch, rank)."""
        seed = int(np.random.default_rng([self.run.seed, epoch, self.dist.rank]).integers(2**31))
        return ViewReplayer(self.source.image_hw, self.specs, self.local_batch,
                            crop_size_for(self.policy, self.source), self.run.device, self.run.num_threads,
                            decode=self.source.encoded, augment=self.augment, seed=seed)

    def epoch_sources(self, epoch: int) -> tuple[ParamsFn, LogitsFn | None]:
        """Where this epoch's view params and teacher logits come from (in store mode: this rank's shard)."""
        if self.shard_reader is not None:
            shard = self.shard_reader.get(epoch)
            return shard.params_of, shard.logits_of
        policy, view = self._epoch_view(epoch)
        src = self.source
        return (lambda idx: sample_params(policy, idx, view, src.sizes_of(idx))), None

    def epoch(self, epoch: int, start_step: int) -> Epoch:
        """The epoch's batches from ``start_step``, replaying the skipped ones where DALI's random state needs it."""
        if epoch > 0 and self.augment.active:
            self.train_replayer = self.make_train_replayer(epoch)
        random.seed(hash((self.run.seed, epoch, self.dist.rank)))  # timm's RandomErasing draws from `random`
        start = time.perf_counter()
        params_of, logits_of = self.epoch_sources(epoch)
        self.read_s = time.perf_counter() - start
        batches = self.epoch_batches(epoch)
        if start_step and self.augment.active:  # DALI's random operators: replay the done batches to advance them
            for _ in stream(self.source, batches[:start_step], self.train_replayer, params_of, logits_of,
                            self.labels):
                pass
        return Epoch(len(batches), stream(self.source, batches[start_step:], self.train_replayer, params_of,
                                          logits_of, self.labels))
