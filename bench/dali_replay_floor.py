"""Per-image cost of the DALI replay graph on CPU, piece by piece, for small images.

Why stage 1 of the Fashion-MNIST demo cannot approach its linear teacher's speed: the graph
``pipeline.data.views.replay`` runs (crop with zero padding, flip + normalize) is timed against
graphs that stop earlier, on the same batch of random ``--size`` x ``--size`` images fed with
the same four per-sample inputs (images, anchor, shape, flip):

- ``feed``: the inputs passed straight through (DALI's cost of feeding and returning a batch);
- ``slice``: the padded crop alone;
- ``replay``: the full graph of ``pipeline.data.views.replay`` (what both stages run).

Run: ``.venv/bin/python bench/dali_replay_floor.py [--size 28 --batch 1024]``.
Prints a JSON object, then a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.common import emit, machine, machine_line
from pipeline.data.views import InputSpec, replay

STAGES = ("feed", "slice", "replay")


def build(stage: str, batch: int, threads: int, size: int) -> Any:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, exec_async=False, exec_pipelined=False,
                  prefetch_queue_depth=1)
    def graph():  # type: ignore[no-untyped-def]
        images = fn.external_source(name="images", layout="HWC")
        anchor, shape, flip = (fn.external_source(name=n) for n in ("anchor", "shape", "flip"))
        if stage == "feed":
            return images, anchor, shape, flip
        if stage == "slice":
            return fn.slice(images, anchor, shape, axis_names="HW", out_of_bounds_policy="pad", fill_values=0,
                            normalized_anchor=False, normalized_shape=False), flip
        return tuple(replay(images, anchor, shape, flip, [InputSpec((size, size), (0.5,), (0.25,))], (size, size)))

    pipe = graph()
    pipe.build()
    return pipe


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    b, s = args.batch, args.size
    feed = {"images": rng.integers(0, 256, (b, s, s, 1), dtype=np.uint8),
            "anchor": rng.integers(-2, 3, (b, 2)).astype(np.float32), "shape": np.full((b, 2), s, np.float32),
            "flip": rng.integers(0, 2, b).astype(np.int32)}
    pipes = {stage: build(stage, b, args.threads, s) for stage in STAGES}

    def once(stage: str) -> float:
        t0 = time.perf_counter()
        for name, value in feed.items():
            pipes[stage].feed_input(name, value)
        pipes[stage].run()
        return time.perf_counter() - t0

    for stage in STAGES:
        for _ in range(3):
            once(stage)
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(args.rounds):  # alternating, so drift hits every stage alike
        for stage in STAGES:
            times[stage].append(once(stage))
    return {"args": vars(args), "machine": machine(),
            "us_per_image": {stage: 1e6 * statistics.median(t) / b for stage, t in times.items()}, "seconds": times}


def table(res: dict[str, Any]) -> str:
    a, us = res["args"], res["us_per_image"]
    return "\n".join([
        f"DALI CPU replay, {a['size']}x{a['size']} grayscale, batch {a['batch']}, {a['threads']} threads; "
        f"medians of {a['rounds']} alternating rounds",
        "", "| graph | us per image |", "|---|---:|",
        f"| feed: four per-sample inputs in, out unchanged | {us['feed']:.2f} |",
        f"| slice: padded crop | {us['slice']:.2f} |",
        f"| replay: `pipeline.data.views.replay` (crop, flip, normalize) | {us['replay']:.2f} |",
        "", machine_line(res["machine"])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    emit(run, table, p.parse_args())


if __name__ == "__main__":
    main()
