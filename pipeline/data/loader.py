"""DALI pipelines that replay stored views, batch ordering and sharding, and a prefetching stream.

The sample order is decided here in numpy (a permutation per epoch from ``(seed, epoch)``) and
each rank takes its contiguous slice of every global batch, so a run with W ranks of batch
``B/W`` sees exactly the batches of a one-process run with batch ``B``. The DALI pipeline is
fed per batch (``feed_input``) with the images and their view params; on CPU it runs DALI's
CPU operators (``device_id=None``), on a GPU the crop/resize/normalize run on the device.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from pipeline.data.sources.base import Source
from pipeline.data.timm_augment import StudentAugment
from pipeline.data.views import InputSpec, ViewPolicy, interp_types, needs_resize, pixel_boxes, replay

class ViewReplayer:
    """Turns ``(images, params [B,6])`` into normalized float tensors ``[B,C,h,w]``, one per :class:`InputSpec`.

    ``images`` are uint8 ``[B,H,W,C]`` arrays, or a list of encoded files when ``decode`` is set
    (decoded by DALI: "mixed" on a GPU, CPU elsewhere). ``augment`` applies to the first output
    only; DALI's random operators draw from ``seed``, so a replayer rebuilt with the same seed
    repeats them exactly.
    """

    def __init__(self, image_hw: tuple[int, int], outputs: list[InputSpec], batch_size: int,
                 crop_hw: tuple[int, int] | None, device: str = "cpu", num_threads: int = 2,
                 decode: bool = False, augment: StudentAugment | None = None, seed: int = 0) -> None:
        from nvidia.dali import fn, pipeline_def, types

        self.image_hw = image_hw
        self.decode = decode
        self.device = torch.device(device)
        gpu = self.device.type == "cuda"
        device_id = (self.device.index or 0) if gpu else None
        conditionals = augment is not None and augment.active
        self.resizes = any(needs_resize(spec, crop_hw) for spec in outputs)

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed & 0x7FFFFFFF,
                      exec_async=False, exec_pipelined=False, prefetch_queue_depth=1,
                      enable_conditionals=conditionals)
        def graph():  # type: ignore[no-untyped-def]
            images = fn.external_source(name="images", layout=None if decode else "HWC")
            anchor = fn.external_source(name="anchor")
            shape = fn.external_source(name="shape")
            flip = fn.external_source(name="flip")
            interp = fn.cast(fn.external_source(name="interp"), dtype=types.INTERP_TYPE) if self.resizes else None
            if decode:
                images = fn.decoders.image(images, device="mixed" if gpu else "cpu", output_type=types.RGB)
            elif gpu:
                images = images.gpu()
            return tuple(replay(images, anchor, shape, flip, outputs, crop_hw, augment, interp))

        self.pipe = graph()
        self.pipe.build()
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray | list[np.ndarray], params: np.ndarray,
                 sizes: np.ndarray | None = None) -> list[torch.Tensor]:
        """Replay ``params`` on ``images``; ``sizes`` ``[B, 2]`` are the images' own sizes when they vary."""
        if len(images) > self.batch_size:
            raise ValueError(f"batch of {len(images)} exceeds the pipeline's batch size {self.batch_size}")
        anchor, shape, flip = pixel_boxes(params, self.image_hw if sizes is None else sizes)
        self.pipe.feed_input("images", list(images) if self.decode else np.ascontiguousarray(images))
        self.pipe.feed_input("anchor", anchor)
        self.pipe.feed_input("shape", shape)
        self.pipe.feed_input("flip", flip)
        if self.resizes:
            self.pipe.feed_input("interp", interp_types(params))
        return [_to_torch(out, self.device) for out in self.pipe.run()]


def _to_torch(out: object, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList as a torch tensor on ``device`` (DLPack on GPU; on CPU ``as_array`` copies,
    so the tensor stays valid after the pipeline runs again, which prefetching relies on)."""
    if device.type == "cuda":
        return torch.from_dlpack(out.as_tensor())  # type: ignore[attr-defined]
    return torch.from_numpy(out.as_array())  # type: ignore[attr-defined]


def crop_size_for(policy: ViewPolicy, source: Source) -> tuple[int, int] | None:
    """The common crop size when no view needs a resize (pad-and-crop at crop_pct 1), else None."""
    if source.encoded:
        return None
    image_hw = source.image_hw
    if policy.kind in ("pad_crop", "none") and policy.crop_pct == 1.0 and image_hw[0] == image_hw[1]:
        return image_hw
    return None


def epoch_order(num_samples: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The global sample order of an epoch; identical on every rank."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)


def shard_batches(order: np.ndarray, global_batch: int, rank: int, world: int,
                  drop_last: bool) -> list[np.ndarray]:
    """Split ``order`` into global batches and return this rank's contiguous slice of each."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world}")
    local = global_batch // world
    n = len(order)
    stop = (n // global_batch) * global_batch if drop_last else n
    batches = []
    for start in range(0, stop, global_batch):
        gb = order[start:start + global_batch]
        if drop_last:
            batches.append(gb[rank * local:(rank + 1) * local])
        else:  # evaluation: spread a short last batch as evenly as possible
            batches.append(np.array_split(gb, world)[rank])
    return [b for b in batches if len(b)]


def chunked_shard_order(num_samples: int, chunk_samples: int, epoch: int, seed: int, rank: int, world: int,
                        window_chunks: int = 0) -> np.ndarray:
    """This rank's sample order for an epoch in which each rank reads only ~1/world of the store's chunks.

    An opt-in alternative to ``epoch_order`` + ``shard_batches`` (FFCV's "quasi-random" order): the
    chunks (blocks of ``chunk_samples`` consecutive samples, as the store holds them) are permuted
    from ``(seed, epoch)``, identically on every rank; the samples of the permuted chunks are cut
    into ``world`` equal contiguous parts, rank ``r`` taking part ``r`` (so it touches at most
    ``ceil(num_samples / (world * chunk_samples)) + 1`` chunks; the last ``num_samples % world``
    samples are left out this epoch); its samples are then shuffled within windows of
    ``window_chunks`` chunks (0: all of them, which costs nothing more when the rank holds its whole
    shard, as ``ShardReader`` does). A W-rank run then no longer sees the batches of a one-process run,
    and a rank's batches come from the chunks it holds: samples stored in class order (an
    ImageFolder) give each rank a few classes per chunk, so write such a store in shuffled order
    or keep the default global order. Indices are sample indices; they line up with store chunks
    when the training part is the whole store (no validation hold-out).
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    cs = max(1, chunk_samples)
    blocks = np.random.default_rng([seed, epoch, 0x43484B]).permutation(-(-num_samples // cs))
    ordered = (blocks[:, None] * cs + np.arange(cs)).reshape(-1)
    ordered = ordered[ordered < num_samples]
    per_rank = num_samples // world
    mine = ordered[rank * per_rank:(rank + 1) * per_rank].astype(np.int64)
    rng = np.random.default_rng([seed, epoch, rank, 0x57494E])
    window = len(mine) if window_chunks <= 0 else window_chunks * cs
    for start in range(0, len(mine), max(1, window)):
        rng.shuffle(mine[start:start + window])
    return mine


def chunked_shard_batches(num_samples: int, chunk_samples: int, global_batch: int, epoch: int, seed: int,
                          rank: int, world: int, window_chunks: int = 0) -> list[np.ndarray]:
    """``chunked_shard_order`` cut into this rank's batches of ``global_batch / world``; every rank gets
    ``num_samples // global_batch`` batches, as ``shard_batches(..., drop_last=True)`` gives."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world}")
    local = global_batch // world
    rows = chunked_shard_order(num_samples, chunk_samples, epoch, seed, rank, world, window_chunks)
    return [rows[i * local:(i + 1) * local] for i in range(num_samples // global_batch)]


@dataclass
class Batch:
    """One training or evaluation batch, tensors on the target device."""

    indices: np.ndarray
    inputs: list[torch.Tensor]
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None


ParamsFn = Callable[[np.ndarray], np.ndarray]
LogitsFn = Callable[[np.ndarray], np.ndarray | None]


def stream(source: Source, batches: list[np.ndarray], replayer: ViewReplayer, params_of: ParamsFn,
           logits_of: LogitsFn | None = None, labels: np.ndarray | None = None, prefetch: int = 2) -> Iterator[Batch]:
    """Yield :class:`Batch` es for ``batches`` of sample indices, preparing the next ones in a thread.

    ``params_of(idx)`` gives the view params to replay, ``logits_of(idx)`` the cached teacher logits
    (or None). DALI's CPU operators release the GIL, so preparation overlaps the training step.
    """
    lab = source.labels if labels is None else labels
    device = replayer.device

    def make(idx: np.ndarray) -> Batch:
        inputs = replayer(source.read(idx), params_of(idx), source.sizes_of(idx) if source.encoded else None)
        t = logits_of(idx) if logits_of is not None else None
        return Batch(idx, [x.to(device, non_blocking=True) for x in inputs],
                     torch.from_numpy(lab[idx]).to(device),
                     None if t is None else torch.from_numpy(np.asarray(t)).to(device))

    if prefetch <= 0:
        for idx in batches:
            yield make(idx)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work() -> None:
        try:
            for idx in batches:
                if stop.is_set():
                    return
                q.put(make(idx))
        except BaseException as exc:  # surfaced in the consumer thread
            q.put(exc)
            return
        q.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
