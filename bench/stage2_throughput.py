"""Stage-2 training throughput: cached teacher logits vs online teacher vs the student alone.

All variants run in one process, on the same data, student model object, batch size and objective
(AdaptConf, from ``configs/fmnist/student_adaptconf.yaml``):

(a) ``cached``  stage 2 from a store: ``SoftLabelStore.read_view`` per epoch, views replayed by the
    Trainer's own ``ViewReplayer`` through ``stream()`` (prefetch thread), student step.
(b) ``online``  stage 2 with the online teacher: teacher forward on the replayed teacher view.
(c) ``limit``   the same student step on preloaded tensors (real replayed batches, random float16
    teacher logits): no data loading at all. The ceiling for (a) and (b).
(d) ``loader``  ``stream()`` of the cached variant with no training (diagnostic).
Cross-check: ``RunLoop.train_epoch`` (the code `w2s train-student` runs), one epoch, cached and online,
with its ``store_read_s`` metric: the time to read and verify the epoch's view from the store.
Stage 1 has its own script, ``bench/stage1_throughput.py``.

Model, optimizer, scheduler, objective, replayers, teacher and store handle come from real
``pipeline.train_student.Trainer`` objects (``prepare()``, store and online mode); the per-step
body below mirrors ``RunLoop.train_epoch`` (same calls, including its per-step ``.item()``
bookkeeping), so (a), (b) and (c) differ only in where the batch and the teacher logits come from.

(a), (b) and (c) keep their batch iterators open for the whole measurement and are timed in
alternating slices of ``--steps`` steps (``--rounds`` of them), so that a machine whose speed
drifts, or another process that wakes up, hits every variant alike; ratios are medians of the
per-round ratios. A slice during which other processes used more than 3% of the CPUs is redone.

Run: ``.venv/bin/python bench/stage2_throughput.py [--rounds 8 --steps 20 --threads 2 ...]``.
Prints a JSON object (stdout) and a markdown table (stdout, after the JSON).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import (
    PAIRS,
    QUIET,
    REDO_BUDGET,
    base_config,
    clean,
    cpu_window,
    machine,
    machine_line,
    make_teacher,
    noisy,
)
from pipeline.config.schema import Config
from pipeline.infer_teacher import infer
from pipeline.data.loader import Batch, epoch_order, shard_batches, stream
from pipeline.engine.run_loop import MetricSums, RunLoop
from pipeline.train_student import Trainer
from pipeline.data.views import PARAM_DIM
from store.soft_label_store import SoftLabelStore


# -- setup ---------------------------------------------------------------------------------------
def prepared_trainer(cfg: Config) -> Trainer:
    """A real Trainer with models, optimizer, scheduler, objective, teacher and replayers set up."""
    tr = Trainer(cfg, "student", console=QUIET)
    tr.prepare()
    return tr


# -- the step, as in RunLoop.train_epoch ---------------------------------------------------------
class Stepper:
    """The body of the run loop's step: ``Trainer.train_step`` (teacher forward in online mode, student
    forward, objective, backward, optimizer step, the scheduler update and the step's named metrics)."""

    def __init__(self, tr: Trainer) -> None:
        self.tr = tr
        self.sums = MetricSums()

    def __call__(self, epoch: int, step: int, b: Batch) -> None:
        self.sums.add(self.tr.train_step(b, epoch, step).metrics)


# -- batch sources -------------------------------------------------------------------------------
Batches = Iterator[tuple[int, int, Batch]]  # (epoch, step within the epoch, batch)


def trainer_batches(tr: Trainer) -> Batches:
    """Epoch after epoch, the batches ``RunLoop.train_epoch`` trains on: view params and teacher
    logits from ``Trainer.data.epoch_sources`` (the store's view of the epoch, or drawn params in online
    mode), replayed by the Trainer's ``ViewReplayer`` in ``stream()``'s prefetch thread."""
    model, data = tr.model, tr.data
    for epoch in itertools.count():
        if epoch > 0 and data.augment.active:
            data.train_replayer = data.make_train_replayer(epoch)
        params_of, logits_of = data.epoch_sources(epoch)
        order = epoch_order(len(tr.train_src), epoch, tr.cfg.run.seed, shuffle=True)
        batches = shard_batches(order, tr.global_batch, tr.dist.rank, tr.dist.world, drop_last=True)
        model.train()
        with contextlib.closing(stream(tr.train_src, batches, data.train_replayer, params_of, logits_of,
                                       data.labels)) as it:
            for step, b in enumerate(it):
                yield epoch, step, b


def preloaded_batches(pool: list[Batch]) -> Batches:
    for step, b in enumerate(itertools.cycle(pool)):
        yield 0, step, b


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """A batch iterator kept open and a step function, measured slice by slice."""

    def __init__(self, batches: Batches, step: Callable[[int, int, Batch], None] | None,
                 batch_size: int, device: torch.device) -> None:
        self.batches, self.step, self.batch_size, self.device = batches, step, batch_size, device

    def advance(self, n: int) -> float:
        """Run ``n`` steps; returns the time spent waiting for batches."""
        wait = 0.0
        for _ in range(n):
            w0 = time.perf_counter()
            e, i, b = next(self.batches)
            wait += time.perf_counter() - w0
            if self.step is not None:
                self.step(e, i, b)
        return wait

    def measure(self, skip: int, steps: int) -> dict[str, float]:
        """``skip`` untimed steps (refill stream()'s prefetch queue after a pause), then ``steps`` timed ones."""
        self.advance(skip)
        sync(self.device)
        end = cpu_window()
        wait = self.advance(steps)
        sync(self.device)
        w = end()
        return {"images_per_s": steps * self.batch_size / w["seconds"], "seconds": w["seconds"],
                "wait_fraction": wait / w["seconds"], "cpu_s_per_step": w["cpu_s"] / steps,
                "foreign_cpu_fraction": w["foreign_cpu_fraction"], "steal_fraction": w["steal_fraction"]}

    def close(self) -> None:
        self.batches.close()  # type: ignore[attr-defined]  # stops stream()'s prefetch thread


# -- report --------------------------------------------------------------------------------------
def table(res: dict[str, Any]) -> str:
    v, q, a = res["variants"], res["ratios"], res["args"]

    def row(name: str, r: dict[str, Any], ratio: str, note: str = "") -> str:
        wf, cpu = r.get("wait_fraction"), r.get("cpu_s_per_step")
        return (f"| {name} | {r['images_per_s']:,.0f} | {ratio} | {'' if wf is None else f'{wf:.2f}'} | "
                f"{'' if cpu is None else f'{1e3 * cpu:.0f}'} | {note} |")

    te = res["trainer_epoch"]
    lines = [(f"stage 2: student `{a['student']}`, teacher `{a['teacher']}`, batch {a['batch_size']}, "
              f"{a['samples']} {PAIRS[a['pair']].dataset} images, {a['threads']} threads, device {a['device']}; "
              f"medians of {a['rounds']} rounds of alternating {a['steps']}-step slices"),
             "", "| variant | images/s | vs limit | data-wait fraction | process CPU ms/step | note |",
             "|---|---:|---:|---:|---:|---|",
             row("(a) cached logits: store + DALI replay + stream()", v["cached"], f"{q['cached/limit']:.3f}",
                 f"median ratio over {res['clean_rounds']['cached']}/{a['rounds']} undisturbed rounds"),
             row("(b) online teacher: DALI replay + teacher forward", v["online"], f"{q['online/limit']:.3f}",
                 f"median ratio over {res['clean_rounds']['online']}/{a['rounds']} undisturbed rounds"),
             row("(c) limit: student step on preloaded tensors", v["limit"], "1.000", ""),
             row("(d) loader only: stream() of (a), no step", v["loader"],
                 f"{v['loader']['images_per_s'] / v['limit']['images_per_s']:.1f}x", "diagnostic"),
             row("RunLoop.train_epoch, store mode", te["store"], f"{q['trainer_store/limit']:.3f}",
                 f"one epoch ({te['store']['steps']} steps), the real loop"),
             row("RunLoop.train_epoch, online mode", te["online"], f"{q['trainer_online/limit']:.3f}",
                 f"one epoch ({te['online']['steps']} steps), the real loop"),
             "",
             (f"store read per epoch (`store_read_s`, the epoch's view read and checksum-verified): "
              f"{1e3 * te['store']['store_read_s']:.1f} ms of a {te['store']['seconds']:.2f} s epoch "
              f"({100 * q['store_read/epoch']:.2f}%). At the recipe's full size ({res['full_size_read']['samples']:,} x "
              f"{res['full_size_read']['classes']} float16 logits per view) reading a view takes "
              f"{1e3 * res['full_size_read']['seconds']:.0f} ms, against an epoch of "
              f"{res['full_size_read']['samples'] / v['limit']['images_per_s']:.0f} s at the limit's speed "
              f"({100 * q['full_size_read/epoch_at_limit']:.2f}%)"),
             "", machine_line(res["machine"]),
             (f"during the whole run other processes used {100 * res['foreign_cpu_fraction']:.1f}% of the machine's CPU "
              f"time and the hypervisor stole {100 * res['steal_fraction']:.1f}%; {res['busy_redos']} disturbed timings "
              "were redone")]
    bad = ([n for n in ("cached", "online") if res["clean_rounds"][n] < a["rounds"] // 2]
           + [n for n in ("loader",) if v[n]["noisy_runs"] == len(v[n]["runs"])]
           + [f"Trainer {n}" for n, x in te.items() if noisy(x)])
    if bad:
        lines.append(f"WARNING: other processes or the hypervisor took CPU time during the timings of {', '.join(bad)}, "
                     "even after redoing them; those rows are not reliable. Rerun on an idle machine.")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------
def stage2(args: argparse.Namespace, tr_store: Trainer, tr_online: Trainer) -> dict[str, Any]:
    """(a), (b), (c) in alternating slices with their iterators kept open; then (d) on its own."""
    device = tr_store.device
    # the limit's pool: real replayed batches with random float16 teacher logits, preloaded
    pool = []
    gen = trainer_batches(tr_store)
    for _ in range(args.pool):
        b = next(gen)[2]
        zt = (3 * torch.randn(len(b.indices), tr_store.train_src.num_classes)).half().to(b.labels.device)
        pool.append(Batch(b.indices, [x.clone() for x in b.inputs], b.labels.clone(), zt))
    gen.close()
    step_store = Stepper(tr_store)
    timers = {"cached": Timed(trainer_batches(tr_store), step_store, args.batch_size, device),
              "online": Timed(trainer_batches(tr_online), Stepper(tr_online), args.batch_size, device),
              "limit": Timed(preloaded_batches(pool), step_store, args.batch_size, device)}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in timers}
    redos = 0
    skip = 2  # stream()'s default prefetch depth: after a pause its queue holds this many ready batches
    try:
        for t in timers.values():
            t.advance(args.warmup)
        for _ in range(args.rounds):
            for name, t in timers.items():
                r, n = clean(lambda t=t: t.measure(skip, args.steps), args.busy_retries)  # type: ignore[misc]
                runs[name].append(r)
                redos += n
    finally:
        for t in timers.values():
            t.close()
    # (d) the data path alone: the cached iterator without a step (its own iterator: one DALI pipeline, one thread)
    runs["loader"] = []
    for _ in range(args.repeats):
        t = Timed(trainer_batches(tr_store), None, args.batch_size, device)
        try:
            t.advance(args.warmup)
            runs["loader"].append(clean(lambda t=t: t.measure(skip, 4 * args.steps), args.busy_retries)[0])  # type: ignore[misc]
        finally:
            t.close()
    out: dict[str, Any] = {"busy_redos": redos}
    for name, rs in runs.items():
        use = [r for r in rs if not noisy(r)] or rs  # undisturbed timings when there are any
        out[name] = {"images_per_s": statistics.median(r["images_per_s"] for r in use),
                     "wait_fraction": statistics.median(r["wait_fraction"] for r in use),
                     "cpu_s_per_step": statistics.median(r["cpu_s_per_step"] for r in use),
                     "noisy_runs": sum(noisy(r) for r in rs), "runs": rs}
    return out


def full_size_read(args: argparse.Namespace, tmp: Path, repeats: int = 3) -> dict[str, Any]:
    """``read_view(verify=True)`` (what each epoch starts with) on a store of the recipe's full size
    (random float16 logits, 2 views); median of ``repeats``."""
    pair = PAIRS[args.pair]
    n, c = pair.full_samples, pair.num_classes
    store = SoftLabelStore.create(tmp / "full_size_store", num_samples=n, num_views=2, num_classes=c, param_dim=PARAM_DIM,
                                  chunk_samples=4096, labels=np.zeros(n, dtype=np.int64), attrs={})
    rng = np.random.default_rng(0)
    for chunk in store.chunks():
        rows = chunk.stop - chunk.start
        store.write_chunk(chunk, 3 * rng.standard_normal((rows, c), dtype=np.float32),
                          rng.random((rows, PARAM_DIM), dtype=np.float32))
    store.finalize([0.0, 0.0])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        SoftLabelStore.open(tmp / "full_size_store").read_view(1, verify=True)
        times.append(time.perf_counter() - t0)
    return {"samples": n, "classes": c, "seconds": statistics.median(times), "runs": times}


def trainer_epoch(tr: Trainer) -> dict[str, Any]:
    """One epoch of ``RunLoop.train_epoch`` (epoch 1: an augmented view) and its own images/s metric."""
    end = cpu_window()
    row = RunLoop(tr, resume=False, console=QUIET).train_epoch(1)
    return {"images_per_s": row["images_per_s"], "seconds": row["epoch_s"], "steps": tr.steps_per_epoch,
            "store_read_s": row.get("store_read_s"), **{
        k: v for k, v in end().items() if k in ("foreign_cpu_fraction", "steal_fraction")}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"args": vars(args), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmpdir:
        tmp = Path(tmpdir)
        PAIRS[args.pair].prepare(tmp, args.samples, args.test_limit)
        res["teacher"] = make_teacher(args, tmp)
        store_path = tmp / "store"
        infer(base_config(args, tmp, "store", store_path), console=QUIET)

        # stage 2: real trainers (store mode, online mode)
        tr_store = prepared_trainer(base_config(args, tmp, "store", store_path))
        tr_online = prepared_trainer(base_config(args, tmp, "online", store_path))
        res["variants"] = stage2(args, tr_store, tr_online)
        res["busy_redos"] = res["variants"].pop("busy_redos")

        # cross-check: the Trainer's own epoch loop and its images_per_s metric
        res["trainer_epoch"] = {}
        for name, tr in (("store", tr_store), ("online", tr_online)):
            res["trainer_epoch"][name], n = clean(lambda tr=tr: trainer_epoch(tr), args.busy_retries)  # type: ignore[misc]
            res["busy_redos"] += n

        res["full_size_read"] = full_size_read(args, tmp)

        if args.profile:
            res["profile"] = profile_cached(tr_store, args)

    v = res["variants"]
    lim = v["limit"]["images_per_s"]

    def pairs(a: str) -> list[tuple[dict[str, float], dict[str, float]]]:
        """Rounds in which neither slice was disturbed (all rounds when there are none)."""
        both = list(zip(v[a]["runs"], v["limit"]["runs"]))
        return [(x, y) for x, y in both if not noisy(x) and not noisy(y)] or both

    def paired(a: str) -> float:
        return statistics.median(x["images_per_s"] / y["images_per_s"] for x, y in pairs(a))

    res["clean_rounds"] = {a: len([1 for x, y in zip(v[a]["runs"], v["limit"]["runs"]) if not noisy(x) and not noisy(y)])
                           for a in ("cached", "online")}
    res["ratios"] = {"cached/limit": paired("cached"), "online/limit": paired("online"),
                     "cached/limit_of_medians": v["cached"]["images_per_s"] / lim,
                     "online/limit_of_medians": v["online"]["images_per_s"] / lim,
                     "online/cached": paired("online") / paired("cached"),
                     "trainer_store/limit": res["trainer_epoch"]["store"]["images_per_s"] / lim,
                     "trainer_online/limit": res["trainer_epoch"]["online"]["images_per_s"] / lim,
                     "full_size_read/epoch_at_limit": res["full_size_read"]["seconds"] * lim / res["full_size_read"]["samples"],
                     "store_read/epoch": res["trainer_epoch"]["store"]["store_read_s"] / res["trainer_epoch"]["store"]["seconds"]}
    return res


def profile_cached(tr: Trainer, args: argparse.Namespace) -> str:
    """cProfile of the cached variant's main thread (the prefetch thread is not profiled)."""
    import cProfile
    import io
    import pstats

    t = Timed(trainer_batches(tr), Stepper(tr), args.batch_size, tr.device)
    prof = cProfile.Profile()
    try:
        t.advance(args.warmup)
        prof.enable()
        t.advance(args.rounds * args.steps)
        prof.disable()
    finally:
        t.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="fmnist", choices=sorted(PAIRS),
                   help="fmnist: the demo's fmnist_cnn <- fmnist_linear; cifar: cifar_resnet56 <- cifar_resnet20 "
                        "(CIFAR-100 recipe, random 32x32 pixels)")
    p.add_argument("--batch-size", type=int, default=0, help="student batch (default: the pair's, 128 / 64)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per slice (default: the pair's, 20 / 6)")
    p.add_argument("--rounds", type=int, default=8, help="rounds of alternating slices of (a), (b), (c); medians are reported")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps before the first slice of each variant")
    p.add_argument("--repeats", type=int, default=3, help="repeats of (d); the median is reported")
    p.add_argument("--samples", type=int, default=0, help="training images (default: the pair's, 4096 / 1024)")
    p.add_argument("--test-limit", type=int, default=512, help="test images (only for the Trainer's set-up)")
    p.add_argument("--teacher", default="", help="teacher model (default: the pair's)")
    p.add_argument("--student", default="", help="student model (default: the pair's)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads and DALI threads (run.num_threads)")
    p.add_argument("--device", default="cpu", help="run.device: cpu or cuda[:N]")
    p.add_argument("--infer-batch-size", type=int, default=0, help="teacher.batch_size when writing the store (default: --batch-size)")
    p.add_argument("--pool", type=int, default=8, help="preloaded batches cycled by the limit variant")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher 1 epoch instead of leaving it untrained")
    p.add_argument("--busy-retries", type=int, default=2,
                   help="redo a timing up to this many times when other processes used over 3%% of the machine's "
                        "CPU time or the hypervisor stole over 1%%")
    p.add_argument("--redo-budget", type=float, default=60.0,
                   help="seconds a run may spend in total on redoing disturbed timings")
    p.add_argument("--profile", action="store_true", help="also cProfile the cached variant's main thread (stderr)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON object")
    args = p.parse_args()
    pair = PAIRS[args.pair]
    args.batch_size = args.batch_size or pair.batch_size
    args.steps = args.steps or pair.steps
    args.samples = args.samples or pair.samples
    args.teacher, args.student = args.teacher or pair.teacher, args.student or pair.student
    if min(args.repeats, args.rounds, args.steps, args.pool) < 1 or min(args.warmup, args.busy_retries) < 0:
        p.error("--repeats, --rounds, --steps and --pool must be >= 1; --warmup and --busy-retries >= 0")
    REDO_BUDGET["seconds_left"] = args.redo_budget
    end = cpu_window()
    res = run(args)
    w = end()
    res["total_s"], res["foreign_cpu_fraction"], res["steal_fraction"] = w["seconds"], w["foreign_cpu_fraction"], w["steal_fraction"]
    prof = res.pop("profile", None)
    print(json.dumps(res, indent=2))
    if not args.json_only:
        print()
        print(table(res))
        print(f"\n(total {res['total_s']:.0f} s)")
    if prof:
        print(prof, file=sys.stderr)


if __name__ == "__main__":
    main()
