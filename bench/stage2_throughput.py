#!/usr/bin/env python
"""Stage-2 (and stage-1) training throughput: cached teacher logits vs online teacher vs the student alone.

All variants run in one process, on the same data, model, batch size and objective (AdaptConf,
from ``configs/fmnist/student_adaptconf.yaml``):

(a) ``cached``  stage 2 from a store: ``SoftLabelStore.read_view`` per epoch, views replayed by the
    Trainer's own ``ViewReplayer`` through ``stream()`` (prefetch thread), student step.
(b) ``online``  stage 2 with the online teacher: teacher forward on the replayed teacher view.
(c) ``limit``   the same student step on preloaded tensors (real replayed batches, random float16
    teacher logits): no data loading at all. The ceiling for (a) and (b).
(d) ``loader``  ``stream()`` of the cached variant with no training (diagnostic).
Cross-check: ``Trainer._train_epoch`` (the code `w2s train-student` runs), one epoch, cached and online.
Stage 1: ``pipeline.infer_teacher.infer`` end to end vs the teacher's forward on preloaded tensors.

Models, optimizer, scheduler, objective, replayer and store handle come from a real
``pipeline.train_student.Trainer`` (``_prepare()``); the per-step body below mirrors
``Trainer._train_epoch`` (same calls, including its per-step ``.item()`` bookkeeping), so the three
variants differ only in where the batch and the teacher logits come from.

Run: ``.venv/bin/python bench/stage2_throughput.py [--steps 60 --repeats 3 --threads 2 ...]``.
Prints a JSON object (stdout) and a markdown table (stdout, after the JSON).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from pipeline.checkpoint import save_model  # noqa: E402
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.infer_teacher import infer  # noqa: E402
from pipeline.loader import Batch, stream  # noqa: E402
from pipeline.models import create  # noqa: E402
from pipeline.sources.registry import train_and_test  # noqa: E402
from pipeline.train_student import Trainer, dataset_record  # noqa: E402
from pipeline.views import sample_params  # noqa: E402
from store.soft_label_store import SoftLabelStore  # noqa: E402

RECIPE = ROOT / "configs" / "fmnist" / "student_adaptconf.yaml"
QUIET = Console(quiet=True)
BUSY = 0.05  # share of the machine's CPU time used by other processes above which a timed run is redone


# -- setup ---------------------------------------------------------------------------------------
def base_config(args: argparse.Namespace, tmp: Path, mode: str, store: Path, samples: int = 0) -> Config:
    """The adaptconf student recipe on the first ``--samples`` images of its training half."""
    return load_config(RECIPE, [
        f"data.limit={samples or args.samples}", f"data.test_limit={args.test_limit}",
        f"model.name={args.student}",
        f"teacher.checkpoint={tmp / 'teacher'}", f"teacher.store={store}", f"teacher.mode={mode}",
        f"teacher.batch_size={args.infer_batch_size or args.batch_size}",
        f"optim.batch_size={args.batch_size}",
        f"run.num_threads={args.threads}", f"run.device={args.device}", f"run.output={tmp / ('run_' + mode)}",
    ])


def make_teacher(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """An untrained teacher saved as `w2s train-teacher` would (or trained for one epoch with --train-teacher)."""
    if args.train_teacher:
        from pipeline.train_student import train

        cfg = load_config(ROOT / "configs" / "fmnist" / "teacher_linear.yaml", [
            "data.subset=half_b", f"data.limit={args.samples}", f"data.test_limit={args.test_limit}",
            f"model.name={args.teacher}", "optim.epochs=1", f"optim.batch_size={args.batch_size}",
            f"run.num_threads={args.threads}", f"run.device={args.device}", f"run.output={tmp / 'teacher'}"])
        t0 = time.perf_counter()
        result = train(cfg, role="teacher", console=QUIET)
        return {"trained_epochs": 1, "test_acc": result["test_acc"], "train_s": time.perf_counter() - t0}
    cfg = base_config(args, tmp, "store", tmp / "unused")
    src, _ = train_and_test(cfg.data)
    torch.manual_seed(0)
    model = create(args.teacher, src.num_classes, src.channels)
    meta = {"model": args.teacher, "kwargs": {}, "num_classes": src.num_classes, "in_chans": src.channels,
            "mean": list(src.mean), "std": list(src.std), "input_size": src.image_hw[0],
            "dataset": dataset_record(src)}
    save_model(model, tmp / "teacher", meta)
    return {"trained_epochs": 0}


def prepared_trainer(cfg: Config) -> Trainer:
    """A real Trainer with models, optimizer, scheduler, objective, teacher and replayers set up."""
    tr = Trainer(cfg, "student", resume=False, console=QUIET)
    tr._prepare()
    return tr


# -- the step, as in Trainer._train_epoch ---------------------------------------------------------
class Stepper:
    """The body of ``Trainer._train_epoch``'s loop for one trainer (``online`` runs the teacher)."""

    def __init__(self, tr: Trainer, online: bool) -> None:
        self.tr, self.online = tr, online
        self.updates = 0
        self.sums = np.zeros(9)

    def __call__(self, epoch: int, b: Batch) -> None:
        tr = self.tr
        zt = b.teacher_logits
        if self.online:
            with torch.no_grad():
                zt = tr.teacher.model(b.inputs[1])  # type: ignore[union-attr,misc]
        zs = tr.ddp(b.inputs[0])
        out = tr.objective(zs, zt, b.labels, epoch=epoch, epochs=tr.cfg.optim.epochs)
        tr.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        tr.optimizer.step()
        self.updates += 1
        tr.scheduler.step_update(self.updates)
        n = len(b.indices)
        pred = zs.detach().argmax(1)
        self.sums += [out.total.item() * n, out.terms["gt"].item() * n, out.terms.get("kd", torch.tensor(0.)).item() * n,
                      out.terms.get("align", torch.tensor(0.)).item() * n,
                      0.0 if out.sample_weight is None else out.sample_weight.sum().item(),
                      (pred == b.labels).sum().item(),
                      0.0 if zt is None else (pred == zt.argmax(1)).sum().item(), n, 1]


# -- batch sources -------------------------------------------------------------------------------
def cached_batches(tr: Trainer) -> Iterator[tuple[int, Batch]]:
    """Epoch after epoch, exactly as Trainer feeds a store-mode run."""
    for epoch in itertools.count():
        view = tr.policy.epoch_view(epoch, tr.cfg.views.augment)
        logits_all, params_all = tr.teacher.store.read_view(view)  # type: ignore[union-attr]
        for b in stream(tr.train_src, tr._batches(epoch), tr.train_replayer,
                        lambda idx, p=params_all: p[idx], lambda idx, lg=logits_all: lg[idx], tr.labels):
            yield epoch, b


def online_batches(tr: Trainer) -> Iterator[tuple[int, Batch]]:
    """Epoch after epoch, exactly as Trainer feeds an online-teacher run (params drawn, not read)."""
    hw = tr.train_src.image_hw
    for epoch in itertools.count():
        view = tr.policy.epoch_view(epoch, tr.cfg.views.augment)
        for b in stream(tr.train_src, tr._batches(epoch), tr.train_replayer,
                        lambda idx, v=view: sample_params(tr.policy, idx, v, hw), None, tr.labels):
            yield epoch, b


def preloaded_batches(pool: list[Batch]) -> Iterator[tuple[int, Batch]]:
    for b in itertools.cycle(pool):
        yield 0, b


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(batches: Iterator[tuple[int, Batch]], step: Callable[[int, Batch], None] | None, warmup: int,
               steps: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """Warm up, then time ``steps`` steps; also the time the step loop waited for its next batch."""
    try:
        for _ in range(warmup):
            e, b = next(batches)
            if step is not None:
                step(e, b)
        sync(device)
        wait = 0.0
        busy0, own0 = _busy_cpu_s(), _own_cpu_s()
        t0 = time.perf_counter()
        for _ in range(steps):
            w0 = time.perf_counter()
            e, b = next(batches)
            wait += time.perf_counter() - w0
            if step is not None:
                step(e, b)
        sync(device)
        dt = time.perf_counter() - t0
        own = _own_cpu_s() - own0
        foreign = (_busy_cpu_s() - busy0) - own
    finally:
        batches.close()  # type: ignore[attr-defined]  # stops stream()'s prefetch thread
    return {"images_per_s": steps * batch_size / dt, "seconds": dt, "wait_fraction": wait / dt,
            "cpu_s_per_step": own / steps, "foreign_cpu_fraction": max(0.0, foreign) / (dt * (os.cpu_count() or 1))}


def teacher_only(model: torch.nn.Module, x: torch.Tensor, min_seconds: float, device: torch.device) -> dict[str, float]:
    """Teacher forward (no_grad, eval) on a preloaded batch, repeated for at least ``min_seconds``."""
    with torch.no_grad():
        for _ in range(5):
            model(x)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(20):
                model(x)
            n += 20
            sync(device)
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
    return {"images_per_s": n * len(x) / dt, "seconds": dt}


# -- report --------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    quota = None
    try:
        q, p = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        quota = None if q == "max" else int(q) / int(p)
    except (OSError, ValueError):
        pass
    import nvidia.dali as dali
    import timm
    import zarr

    info = {"cpu_model": cpu, "cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
            "cgroup_cpu_quota": quota, "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "dali": dali.__version__,
            "timm": timm.__version__, "zarr": zarr.__version__, "numpy": np.__version__,
            "loadavg_1min_at_start": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(res: dict[str, Any]) -> str:
    v, s1, q = res["variants"], res["stage1"], res["ratios"]
    lim = v["limit"]["images_per_s"]
    t1 = s1["teacher_only"]["images_per_s"]

    def row(name: str, r: dict[str, Any], ratio: str, note: str = "") -> str:
        wf, cpu = r.get("wait_fraction"), r.get("cpu_s_per_step")
        if cpu is None and "runs" in r:
            cpu = statistics.median(x["cpu_s_per_step"] for x in r["runs"])
        return (f"| {name} | {r['images_per_s']:,.0f} | {ratio} | {'' if wf is None else f'{wf:.2f}'} | "
                f"{'' if cpu is None else f'{1e3 * cpu:.0f}'} | {note} |")

    a = res["args"]
    lines = [f"stage 2: student `{a['student']}`, teacher `{a['teacher']}`, batch {a['batch_size']}, "
             f"{a['samples']} Fashion-MNIST images, {a['threads']} threads, device {a['device']}, "
             f"median of {a['repeats']} interleaved runs of {a['steps']} steps",
             "", "| variant | images/s | ratio | data-wait fraction | process CPU ms/step | note |",
             "|---|---:|---:|---:|---:|---|",
             row("(a) cached logits (store + DALI replay + stream)", v["cached"], f"{q['cached/limit']:.3f} of limit",
                 f"paired median {q['cached/limit_paired_median']:.3f}"),
             row("(b) online teacher (DALI replay + teacher fwd)", v["online"], f"{q['online/limit']:.3f} of limit",
                 f"paired median {q['online/limit_paired_median']:.3f}"),
             row("(c) limit: student step on preloaded tensors", v["limit"], "1.000"),
             row("(d) loader only: stream() of (a), no step", v["loader"], f"{v['loader']['images_per_s'] / lim:.1f}x limit",
                 "diagnostic"),
             row("Trainer._train_epoch, store", res["trainer_epoch"]["store"], f"{q['trainer_store/limit']:.3f} of limit",
                 "1 epoch, real code"),
             row("Trainer._train_epoch, online", res["trainer_epoch"]["online"], f"{q['trainer_online/limit']:.3f} of limit",
                 "1 epoch, real code"),
             "",
             f"stage 1: teacher `{a['teacher']}`, {s1['images']} views ({s1['samples']} samples x {s1['views']} views), "
             f"batch {s1['batch_size']}, median of {a['repeats']}",
             "", "| variant | images/s | ratio | note |", "|---|---:|---:|---|",
             f"| infer-teacher, end to end (`infer()`) | {s1['infer']['images_per_s']:,.0f} | "
             f"{q['stage1/teacher_only']:.4f} of teacher-only | {s1['infer']['seconds']:.2f} s; one batch alone takes "
             f"{s1['infer_one_batch_s']['seconds']:.2f} s |",
             f"| infer-teacher, marginal (difference of the two) | {s1['infer_marginal_images_per_s']:,.0f} | "
             f"{q['stage1_marginal/teacher_only']:.4f} of teacher-only | the chunk loop without fixed costs |",
             f"| teacher forward on preloaded tensors | {t1:,.0f} | 1.0000 | |",
             "", "machine: " + ", ".join(f"{k} {res['machine'].get(k)}" for k in
                                         ("cpu_model", "cpus_available", "cgroup_cpu_quota", "torch", "dali")),
             f"other processes used {100 * res['foreign_cpu_fraction']:.1f}% of the machine's CPU time during the run "
             f"(at most {100 * max(x['foreign_cpu_fraction_max'] for x in v.values()):.1f}% during one timed run)"]
    if max(x["foreign_cpu_fraction_max"] for x in v.values()) > BUSY:
        lines.append("WARNING: other processes competed for the CPUs during timed runs (a)-(d); these numbers are not "
                     "reliable, rerun on an idle machine.")
    elif res["foreign_cpu_fraction"] > BUSY:
        lines.append("note: (a)-(d) ran on idle CPUs, but other processes were active during the run; the stage-1 and "
                     "Trainer-epoch rows (single timings) may be affected.")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------
def timed_infer(cfg: Config) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    summary = infer(cfg, console=QUIET)
    return time.perf_counter() - t0, summary


def stage1(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``infer()`` end to end on ``--samples`` images and on one batch of images, each repeat into fresh stores.

    The small run costs what ``infer()`` pays whatever the size (reading and fingerprinting the
    dataset, loading the teacher, building the DALI pipeline, creating and finalizing the store),
    so the difference of the two gives the per-image (marginal) rate of the chunk loop.
    """
    big, small, summary = [], [], {}
    n_small = min(args.infer_batch_size or args.batch_size, args.samples)
    for r in range(args.repeats):
        wall, summary = timed_infer(base_config(args, tmp, "store", tmp / f"store_{r}"))
        big.append(wall)
        small.append(timed_infer(base_config(args, tmp, "store", tmp / f"store_small_{r}", samples=n_small))[0])
    views = len(summary["teacher_accuracy"])
    n_big = SoftLabelStore.open(tmp / "store_0").num_samples
    wall_big, wall_small = statistics.median(big), statistics.median(small)
    return {"samples": n_big, "views": views, "images": n_big * views,
            "batch_size": args.infer_batch_size or args.batch_size,
            "infer": {"images_per_s": n_big * views / wall_big, "seconds": wall_big, "runs_s": big},
            "infer_one_batch_s": {"seconds": wall_small, "samples": n_small, "runs_s": small},
            "infer_marginal_images_per_s": (n_big - n_small) * views / max(wall_big - wall_small, 1e-9),
            "teacher_accuracy_per_view": summary["teacher_accuracy"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"args": vars(args), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmpdir:
        tmp = Path(tmpdir)
        res["teacher"] = make_teacher(args, tmp)
        res["stage1"] = stage1(args, tmp)
        store_path = tmp / "store_0"

        # stage 2: real trainers (store mode, online mode)
        tr_store = prepared_trainer(base_config(args, tmp, "store", store_path))
        tr_online = prepared_trainer(base_config(args, tmp, "online", store_path))
        device = tr_store.device
        step_store, step_online = Stepper(tr_store, online=False), Stepper(tr_online, online=True)
        # the limit's pool: real replayed batches with random float16 teacher logits, preloaded
        pool = []
        gen = cached_batches(tr_store)
        for _ in range(args.pool):
            _, b = next(gen)
            zt = (3 * torch.randn(len(b.indices), tr_store.train_src.num_classes)).half().to(b.labels.device)
            pool.append(Batch(b.indices, [x.clone() for x in b.inputs], b.labels.clone(), zt))
        gen.close()

        variants: dict[str, Callable[[], dict[str, float]]] = {
            "cached": lambda: time_steps(cached_batches(tr_store), step_store, args.warmup, args.steps, args.batch_size, device),
            "online": lambda: time_steps(online_batches(tr_online), step_online, args.warmup, args.steps, args.batch_size, device),
            "limit": lambda: time_steps(preloaded_batches(pool), step_store, args.warmup, args.steps, args.batch_size, device),
            "loader": lambda: time_steps(cached_batches(tr_store), None, args.warmup, args.steps, args.batch_size, device),
        }
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        retried = 0
        for _ in range(args.repeats):  # interleaved, so slow drifts of the machine hit every variant alike
            for name, fn in variants.items():
                r = fn()
                for _ in range(args.busy_retries):  # another process took the CPUs: measure again
                    if r["foreign_cpu_fraction"] <= BUSY:
                        break
                    retried += 1
                    time.sleep(1.0)
                    r = fn()
                runs[name].append(r)
        res["busy_retries_used"] = retried
        res["variants"] = {}
        for name, rs in runs.items():
            res["variants"][name] = {"images_per_s": statistics.median(r["images_per_s"] for r in rs),
                                     "wait_fraction": statistics.median(r["wait_fraction"] for r in rs),
                                     "foreign_cpu_fraction_max": max(r["foreign_cpu_fraction"] for r in rs),
                                     "runs": rs}

        # stage 1's limit: the teacher's forward on a preloaded batch of its own (teacher-normalized) views
        gen = online_batches(tr_online)
        views = [next(gen)[1].inputs[1] for _ in range(math.ceil(res["stage1"]["batch_size"] / args.batch_size))]
        gen.close()
        x_teacher = torch.cat(views)[:res["stage1"]["batch_size"]].clone()
        res["stage1"]["teacher_only"] = teacher_only(tr_online.teacher.model, x_teacher, args.min_seconds, device)  # type: ignore[union-attr,arg-type]

        # cross-check: the Trainer's own epoch loop and its images_per_s metric
        res["trainer_epoch"] = {}
        for name, tr in (("store", tr_store), ("online", tr_online)):
            row = tr._train_epoch(1)
            res["trainer_epoch"][name] = {"images_per_s": row["images_per_s"], "seconds": row["epoch_s"],
                                          "steps": tr.steps_per_epoch}

        if args.profile:
            res["profile"] = profile_cached(tr_store, step_store, args, device)

    v, s1 = res["variants"], res["stage1"]
    lim = v["limit"]["images_per_s"]
    paired = lambda a: statistics.median(x["images_per_s"] / y["images_per_s"]  # noqa: E731
                                         for x, y in zip(v[a]["runs"], v["limit"]["runs"]))
    res["ratios"] = {"cached/limit": v["cached"]["images_per_s"] / lim,
                     "online/limit": v["online"]["images_per_s"] / lim,
                     "cached/limit_paired_median": paired("cached"),
                     "online/limit_paired_median": paired("online"),
                     "online/cached": v["online"]["images_per_s"] / v["cached"]["images_per_s"],
                     "trainer_store/limit": res["trainer_epoch"]["store"]["images_per_s"] / lim,
                     "trainer_online/limit": res["trainer_epoch"]["online"]["images_per_s"] / lim,
                     "stage1/teacher_only": s1["infer"]["images_per_s"] / s1["teacher_only"]["images_per_s"],
                     "stage1_marginal/teacher_only": s1["infer_marginal_images_per_s"] / s1["teacher_only"]["images_per_s"]}
    return res


def profile_cached(tr: Trainer, step: Stepper, args: argparse.Namespace, device: torch.device) -> str:
    """cProfile of the cached variant's main thread (the prefetch thread is not profiled)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    time_steps(cached_batches(tr), step, args.warmup, args.steps, args.batch_size, device)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
    return out.getvalue()


def _busy_cpu_s() -> float:
    """CPU seconds all processes spent busy (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant and repeat")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps before each timed run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    p.add_argument("--samples", type=int, default=4096, help="Fashion-MNIST training images used (stage 1 and 2)")
    p.add_argument("--test-limit", type=int, default=512, help="test images (only for the Trainer's set-up)")
    p.add_argument("--teacher", default="fmnist_linear", choices=["fmnist_linear", "fmnist_mlp"])
    p.add_argument("--student", default="fmnist_cnn")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads and DALI threads (run.num_threads)")
    p.add_argument("--device", default="cpu", help="run.device: cpu or cuda[:N]")
    p.add_argument("--infer-batch-size", type=int, default=0, help="stage-1 batch (default: --batch-size)")
    p.add_argument("--pool", type=int, default=8, help="preloaded batches cycled by the limit variant")
    p.add_argument("--min-seconds", type=float, default=0.5, help="minimum timing window of the teacher-only loop")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher 1 epoch instead of leaving it untrained")
    p.add_argument("--busy-retries", type=int, default=2,
                   help="redo a timed run up to this many times when other processes used over 5%% of the CPUs")
    p.add_argument("--profile", action="store_true", help="also cProfile the cached variant's main thread (stderr)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON object")
    args = p.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--repeats and --steps must be >= 1, --warmup >= 0")
    t0, busy0, own0 = time.perf_counter(), _busy_cpu_s(), _own_cpu_s()
    res = run(args)
    res["total_s"] = time.perf_counter() - t0
    foreign = (_busy_cpu_s() - busy0) - (_own_cpu_s() - own0)
    res["foreign_cpu_fraction"] = max(0.0, foreign) / (res["total_s"] * (os.cpu_count() or 1))
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
