"""Sweep amortization: an N-run ``w2s sweep`` on one cached store against the same N runs with the online teacher.

Both variants are the real ``pipeline.experiments.sweep.sweep`` (what ``w2s sweep`` runs), in this process, on
the same data, recipe, grid (``objective.name=kd,augconf,adaptconf`` by default, so N = 3) and
threads:

- cached: ``infer()`` into a fresh store (stage 1, paid once), then the sweep in store mode;
- online: the sweep with ``teacher.mode=online`` (the teacher runs in every step of every run).

The teacher's share of the online sweep's compute is measured separately: the teacher's forward on
a preloaded batch (at the student's batch size) times the number of teacher forwards the online
runs make, over the online sweep's wall time. The cached sweep beats the online one by that share
minus what stage 1 costs, so stage 1's cost relative to the online teacher's, ``views / (N x
epochs)``, decides whether the saving reaches the share.

The machine's speed drifts by 20-50% within a minute, so the two variants alternate run by run:
each grid point runs cached then online, or online then cached, the order flipping from one
point and one repeat to the next; a variant's sweep time is the sum of its runs (plus stage 1
for the cached one), averaged over ``--repeats``. Each run is ``sweep()`` with a one-value grid,
the code path of every run of a full sweep.

Run: ``.venv/bin/python bench/sweep_amortization.py [--pair cifar --epochs 10 --views 1 --repeats 2]``.
Prints a JSON object, then a markdown table.
"""
from __future__ import annotations

import dataclasses
import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (
    PAIRS,
    QUIET,
    cpu_window,
    emit,
    machine,
    machine_line,
    make_teacher,
    noisy,
)
from pipeline.config.schema import load_config
from pipeline.infer_teacher import infer
from pipeline.models.pretrained import load_teacher
from pipeline.data.sources.registry import train_and_test
from pipeline.experiments.sweep import sweep


def overrides(args: argparse.Namespace, tmp: Path, mode: str, store: Path) -> list[str]:
    pair = PAIRS[args.pair]
    return [*pair.overrides, *pair.data_overrides(tmp), f"data.limit={args.samples}", f"data.test_limit={args.test_limit}",
            f"views.num_views={args.views}", f"optim.epochs={args.epochs}", "optim.warmup_epochs=0",
            f"optim.batch_size={args.batch_size}", "optim.batch_per_process=0",
            f"teacher.checkpoint={tmp / 'teacher'}", f"teacher.store={store}", f"teacher.mode={mode}",
            f"teacher.batch_size={args.infer_batch_size}", f"run.num_threads={args.threads}", f"run.device={args.device}"]


def one_run(args: argparse.Namespace, tmp: Path, mode: str, objective: str, out: Path) -> dict[str, Any]:
    """One point of the grid as ``w2s sweep`` runs it (``sweep()`` with a one-value grid)."""
    base = overrides(args, tmp, mode, tmp / "store")
    end = cpu_window()
    sweep(PAIRS[args.pair].student_recipe, [f"objective.name={objective}"], [0], base, out, console=QUIET)
    return end()


def stage1(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """infer-teacher into a fresh store at ``tmp/store`` (what ``w2s sweep`` does first when the store is missing)."""
    store = tmp / "store"
    if store.exists():
        shutil.rmtree(store)
    end = cpu_window()
    infer(load_config(PAIRS[args.pair].student_recipe, overrides(args, tmp, "store", store) + [f"run.output={tmp / 'u'}"]),
          console=QUIET)
    return end()


def preloaded_teacher(args: argparse.Namespace, tmp: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The saved teacher and a random batch of the student's batch size at the teacher's input size."""
    cfg = load_config(PAIRS[args.pair].student_recipe,
                      overrides(args, tmp, "online", tmp / "no_store") + [f"run.output={tmp / 'u'}"])
    src, _ = train_and_test(**dataclasses.asdict(cfg.data))
    model, meta, _ = load_teacher(cfg.teacher.checkpoint, None, src.num_classes, src.channels)
    x = torch.randn(args.batch_size, src.channels, meta["input_size"], meta["input_size"])
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model, x


def teacher_seconds(model: torch.nn.Module, x: torch.Tensor, forwards: int) -> dict[str, Any]:
    """Time of ``forwards`` teacher forwards on the preloaded batch (what online mode adds per step)."""
    end = cpu_window()
    with torch.no_grad():
        for _ in range(forwards):
            model(x)
    return end()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"args": vars(args), "machine": machine()}
    n_runs = len(args.objectives.split(","))
    steps = args.samples // args.batch_size  # drop_last
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmpdir:
        tmp = Path(tmpdir)
        PAIRS[args.pair].prepare(tmp, args.samples, args.test_limit)
        make_teacher(args, tmp)
        teacher, x = preloaded_teacher(args, tmp)
        objectives = args.objectives.split(",")
        timings: dict[str, list[dict[str, Any]]] = {"stage1": [], "cached": [], "online": [], "teacher": []}
        for rep in range(args.repeats):
            timings["stage1"].append(stage1(args, tmp))
            for j, objective in enumerate(objectives):
                order = ("cached", "online") if (rep + j) % 2 == 0 else ("online", "cached")
                for name in order:
                    out = tmp / name / f"{objective}_{rep}"
                    timings[name].append({"objective": objective, "repeat": rep,
                                          **one_run(args, tmp, "store" if name == "cached" else "online", objective, out)})
                    if name == "online":
                        timings["teacher"].append(teacher_seconds(teacher, x, args.epochs * steps))
    res["timings"] = timings

    def per_sweep(name: str) -> float:
        """Mean over repeats of the variant's summed timings (one sweep's worth)."""
        return sum(r["seconds"] for r in timings[name]) / args.repeats

    stage1_s, runs_s, online, teacher = per_sweep("stage1"), per_sweep("cached"), per_sweep("online"), per_sweep("teacher")
    cached = stage1_s + runs_s
    res["runs"] = n_runs
    res["cached_s"], res["online_s"], res["stage1_s"], res["cached_runs_s"] = cached, online, stage1_s, runs_s
    res["teacher_s_in_online"] = teacher
    res["teacher_share"] = teacher / online
    res["saving"] = 1 - cached / online
    res["saving_without_stage1"] = 1 - res["cached_runs_s"] / online
    def cpu(name: str) -> float:
        return sum(r["cpu_s"] for r in timings[name]) / args.repeats

    # the same in process CPU seconds, which do not count time stolen by the hypervisor
    res["cpu_saving"] = 1 - (cpu("stage1") + cpu("cached")) / cpu("online")
    res["cpu_teacher_share"] = cpu("teacher") / cpu("online")
    pairs = [1 - c["seconds"] / o["seconds"] for c, o in zip(timings["cached"], timings["online"])]
    res["run_savings"] = {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs), "all": pairs}
    res["stage1_over_online_teacher"] = stage1_s / teacher
    res["views_over_runs_x_epochs"] = (args.views + 1) / (n_runs * args.epochs)
    res["bar_met"] = res["saving"] >= res["teacher_share"]
    res["disturbed"] = [f"{name} {i}" for name, rows in timings.items() for i, r in enumerate(rows)
                        if r["seconds"] > 1 and noisy(r)]  # /proc/stat counts in 10 ms ticks: too coarse below 1 s
    return res


def table(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [(f"sweep amortization: {res['runs']} runs (objective.name={a['objectives']}) of `{a['student']}` "
              f"<- `{a['teacher']}`, {a['epochs']} epochs on {a['samples']} {PAIRS[a['pair']].dataset} images, "
              f"batch {a['batch_size']}, store of {a['views'] + 1} views, {a['threads']} threads, device {a['device']}; "
              f"means over {a['repeats']} repeats of the sweep, cached and online runs alternating"),
             "", "| variant | wall s | vs online | note |", "|---|---:|---:|---|",
             (f"| cached: infer-teacher once + sweep on the store | {res['cached_s']:.1f} | {res['cached_s'] / res['online_s']:.3f} | "
              f"stage 1 {res['stage1_s']:.1f} s + runs {res['cached_runs_s']:.1f} s |"),
             f"| online: sweep with the teacher in every step | {res['online_s']:.1f} | 1.000 | |",
             "",
             (f"saving {100 * res['saving']:.1f}% (without stage 1: {100 * res['saving_without_stage1']:.1f}%); "
              f"the teacher's share of the online sweep: {100 * res['teacher_share']:.1f}% "
              f"({res['teacher_s_in_online']:.1f} s of teacher forwards); stage 1 costs "
              f"{res['stage1_over_online_teacher']:.2f}x the online runs' teacher time "
              f"(views / (runs x epochs) = {res['views_over_runs_x_epochs']:.2f}); per grid point, the cached run "
              f"saved {100 * res['run_savings']['median']:.1f}% over its online twin (median; from "
              f"{100 * res['run_savings']['min']:.1f}% to {100 * res['run_savings']['max']:.1f}%). "
              + ("Saving >= teacher share: bar met." if res["bar_met"] else "Saving < teacher share: bar NOT met.")
              + f" In process CPU time: saving {100 * res['cpu_saving']:.1f}%, teacher share "
                f"{100 * res['cpu_teacher_share']:.1f}%.")
             , "", machine_line(res["machine"])]
    if res["disturbed"]:
        lines.append(f"WARNING: other processes took CPU time during {', '.join(res['disturbed'])}; rerun on an idle machine.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="cifar", choices=sorted(PAIRS))
    p.add_argument("--objectives", default="kd,augconf,adaptconf", help="the grid: one run per objective")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--views", type=int, default=1, help="views.num_views: augmented views in the store (+1 fixed)")
    p.add_argument("--samples", type=int, default=256, help="training images")
    p.add_argument("--repeats", type=int, default=2, help="repeats of the whole comparison")
    p.add_argument("--test-limit", type=int, default=128)
    p.add_argument("--infer-batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    pair = PAIRS[args.pair]
    args.teacher, args.student, args.batch_size, args.train_teacher = pair.teacher, pair.student, pair.batch_size, False
    if args.samples < args.batch_size or min(args.epochs, args.repeats) < 1:
        p.error(f"--samples must be >= the batch size ({args.batch_size}); --epochs and --repeats >= 1")
    emit(run, table, args)


if __name__ == "__main__":
    main()
