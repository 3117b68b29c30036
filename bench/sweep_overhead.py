"""Sweep launcher overhead: what starting each run costs under ``basic`` and ``submitit_local``, against the runs' training.

The real ``pipeline.experiments.sweep.sweep`` (what ``w2s sweep`` runs) with the grid
``objective.name=--objectives`` x ``--seeds`` (kd,adaptconf x 0,1 by default, so N = 4 runs), one run
after another (``parallel=1``, so every figure is one run's and two cores do not confound them),
under each launcher:

- ``basic``: every run in the sweep's own process (imports, data and DALI already warm);
- ``submitit_local``: every run a submitit job, a local subprocess that imports the pipeline, loads
  its config and data, trains, and pickles its result back; the sweep polls the job every 2 s.

Both launchers sweep the same config on the same store, written once by ``infer()`` before any timing
(stage 1 is not launcher overhead), into fresh sweep directories. Figures per launcher:

- submission -> first step, per run: from the moment the sweep starts the run to the mtime of the run's
  ``config.yaml``, which the run loop writes after ``task.prepare()``, right before the first step.
  For ``basic`` the run starts when the previous run wrote its ``result.json`` (the first run: just
  before ``sweep()`` is called, so it includes the sweep's own checks of the grid); for
  ``submitit_local``, at the ``submitted`` time of the run's ``launcher/job.json`` (after the job's
  process was started). Mean and max over all runs.
- sweep wall s: the ``sweep()`` call; training s: the sum of every run's ``epoch_s`` (the epochs' steps
  alone, from ``metrics.jsonl``); overhead per run: (wall - training) / N, which holds the launcher's
  cost and what every run pays under any launcher (setup, per-epoch evaluation and checkpoints, model
  files); wall / training: the sweep's time per second of training.
- submitit_local / basic: the ratio of the two sweeps' wall times; the difference of their overheads
  per run is what ``submitit_local`` adds per run.

The machine's speed drifts within a minute, so the launchers alternate: ``basic`` first in even
repeats, ``submitit_local`` first in odd ones; figures are means over ``--repeats``.

Run: ``.venv/bin/python bench/sweep_overhead.py [--pair fmnist --epochs 3 --samples 1024 --repeats 2]``.
Prints a JSON object, then a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import PAIRS, QUIET, cpu_window, emit, machine, machine_line, make_teacher, noisy
from bench.sweep_amortization import overrides, stage1
from pipeline.experiments.sweep import sweep

LAUNCHERS = ("basic", "submitit_local")


def timed_sweep(args: argparse.Namespace, tmp: Path, launcher: str, out: Path) -> dict[str, Any]:
    """One ``sweep()`` of the grid under ``launcher``: its wall and CPU window, and each run's figures."""
    end = cpu_window()
    children0 = os.times()
    start = time.time()
    manifest = sweep(PAIRS[args.pair].student_recipe, [f"objective.name={args.objectives}"], args.seed_list,
                     overrides(args, tmp, "store", tmp / "store"), out, console=QUIET, launcher=launcher)
    window = end()
    # the submitit jobs' CPU is this process's children's: not foreign to the timing
    children = sum(os.times()[2:4]) - sum(children0[2:4])
    window["cpu_s"] += children
    capacity = window["seconds"] * (os.cpu_count() or 1)
    window["foreign_cpu_fraction"] = max(0.0, window["foreign_cpu_fraction"] - children / capacity)
    runs, previous_end = [], start
    for r in manifest["runs"]:  # basic runs them in this order, one after another
        d = out / r["name"]
        submitted = previous_end if launcher == "basic" else json.loads((d / "launcher" / "job.json").read_text())["submitted"]
        finished = (d / "result.json").stat().st_mtime
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        runs.append({"name": r["name"], "submitted_s": submitted - start,
                     "first_step_s": (d / "config.yaml").stat().st_mtime - submitted,
                     "finished_s": finished - start, "epochs": len(rows), "training_s": sum(row["epoch_s"] for row in rows)})
        previous_end = finished
    return {"launcher": launcher, **window, "training_s": sum(r["training_s"] for r in runs), "runs": runs}


def figures(sweeps: list[dict[str, Any]]) -> dict[str, Any]:
    """A launcher's figures: means over its repeats, first-step times over all its runs."""
    n = len(sweeps[0]["runs"])
    total = statistics.mean(s["seconds"] for s in sweeps)
    training = statistics.mean(s["training_s"] for s in sweeps)
    first = [r["first_step_s"] for s in sweeps for r in s["runs"]]
    return {"sweep_s": total, "training_s": training, "overhead_per_run_s": (total - training) / n,
            "wall_over_training": total / training, "first_step_mean_s": statistics.mean(first),
            "first_step_max_s": max(first)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {"args": vars(args), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmpdir:
        tmp = Path(tmpdir)
        PAIRS[args.pair].prepare(tmp, args.samples, args.test_limit)
        make_teacher(args, tmp)
        res["stage1"] = stage1(args, tmp)
        sweeps: list[dict[str, Any]] = []
        for rep in range(args.repeats):
            for launcher in LAUNCHERS if rep % 2 == 0 else LAUNCHERS[::-1]:
                sweeps.append({"repeat": rep, **timed_sweep(args, tmp, launcher, tmp / f"{launcher}_{rep}")})
    res["sweeps"] = sweeps
    res["runs"] = len(sweeps[0]["runs"])
    res["launchers"] = {name: figures([s for s in sweeps if s["launcher"] == name]) for name in LAUNCHERS}
    basic, submitit = res["launchers"]["basic"], res["launchers"]["submitit_local"]
    res["submitit_over_basic"] = submitit["sweep_s"] / basic["sweep_s"]
    res["submitit_extra_per_run_s"] = submitit["overhead_per_run_s"] - basic["overhead_per_run_s"]
    res["disturbed"] = [f"{s['launcher']} {s['repeat']}" for s in sweeps if noisy(s)]
    return res


def table(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [(f"sweep launcher overhead: {res['runs']} runs (objective.name={a['objectives']} x seeds {a['seeds']}) "
              f"of `{a['student']}` <- `{a['teacher']}` one after another, {a['epochs']} epochs on {a['samples']} "
              f"{PAIRS[a['pair']].dataset} images, batch {a['batch_size']}, {a['threads']} threads, device {a['device']}; "
              f"means over {a['repeats']} repeats, the launchers alternating"),
             "", "| launcher | sweep wall s | training s | overhead per run s | wall / training "
                 "| submission -> first step, mean s | max s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in res["launchers"].items():
        lines.append(f"| `{name}` | {f['sweep_s']:.1f} | {f['training_s']:.1f} | {f['overhead_per_run_s']:.2f} | "
                     f"{f['wall_over_training']:.2f} | {f['first_step_mean_s']:.2f} | {f['first_step_max_s']:.2f} |")
    lines += ["", (f"submitit_local / basic sweep wall: {res['submitit_over_basic']:.2f}; submitit_local adds "
                   f"{res['submitit_extra_per_run_s']:.2f} s per run. Training s is the sum of the runs' `epoch_s`; "
                   "overhead per run is (wall - training) / runs."), "", machine_line(res["machine"])]
    if res["disturbed"]:
        lines.append(f"WARNING: other processes took CPU time during {', '.join(res['disturbed'])}; rerun on an idle machine.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="fmnist", choices=sorted(PAIRS))
    p.add_argument("--objectives", default="kd,adaptconf", help="the grid's objective.name values")
    p.add_argument("--seeds", default="0,1", help="each grid point's seeds")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=1024, help="training images")
    p.add_argument("--views", type=int, default=1, help="views.num_views: augmented views in the store (+1 fixed)")
    p.add_argument("--repeats", type=int, default=2, help="repeats of both sweeps, the launchers' order alternating")
    p.add_argument("--test-limit", type=int, default=128)
    p.add_argument("--infer-batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    pair = PAIRS[args.pair]
    args.teacher, args.student, args.batch_size, args.train_teacher = pair.teacher, pair.student, pair.batch_size, False
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    if args.samples < args.batch_size or min(args.epochs, args.repeats) < 1:
        p.error(f"--samples must be >= the batch size ({args.batch_size}); --epochs and --repeats >= 1")
    emit(run, table, args)


if __name__ == "__main__":
    main()
