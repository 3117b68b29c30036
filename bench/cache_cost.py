"""What caching the teacher costs in accuracy: students from a store of K views against the online
teacher with a fresh view every epoch (the paper's regime), on the embedded Fashion-MNIST demo.

For every seed s:
(a) ``online``: the demo's AdaptConf student (``configs/fmnist/student_adaptconf.yaml``, weak
    labels only) with the teacher run on a fresh view every epoch (``views.sampling: fresh``);
(b) ``store K``: the same student replaying a store of K augmented views written with views seed
    s, cycled over the epochs, for every K of ``--ks`` and K = epochs.
Both regimes draw view ``1 + e`` of the same policy at epoch e < K, so a store with K = epochs
gives (a)'s views exactly (only the float16 logits differ), and seed s pairs (a) with (b).

Reported: test accuracy mean +- std per regime; (b) - (a) per K, paired over seeds, with its 95%
confidence interval (Student's t); and each K's stage-1 cost as a fraction of the online teacher's
total cost. Stage-1 wall time is measured per store; it is fitted as ``c0 + c1 (K + 1)`` (fixed cost
plus one pass over the training set per view), and the online teacher's total cost is taken as
``epochs x c1`` (one pass per epoch, the replay of its copy included). The weak teacher is
``configs/fmnist/teacher_linear.yaml`` (seed 0), shared by all runs.

    python bench/cache_cost.py                      # docs/cache_cost.md's table
    python bench/cache_cost.py --limit 300 --test-limit 200 --epochs 3 --ks 1 --seeds 0,1   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
from rich.console import Console

from bench.common import emit, machine, machine_line
from pipeline.config.schema import Config, load_config
from pipeline.infer_teacher import infer
from pipeline.experiments.report import plus_minus
from pipeline.experiments.stats import mean_std, paired_difference
from pipeline.train_student import train

CONFIGS = ROOT / "configs" / "fmnist"


def _cfg(name: str, args: argparse.Namespace, *over: str) -> Config:
    common = [f"data.limit={args.limit}", f"data.test_limit={args.test_limit}", f"run.num_threads={args.threads}"]
    if args.data_dir:
        common.append(f"data.data_dir={args.data_dir}")
    return load_config(CONFIGS / f"{name}.yaml", common + list(over))


def _student(args: argparse.Namespace, out: Path, seed: int, teacher: Path, console: Console, *over: str) -> dict[str, Any]:
    res_file = out / "result.json"
    if res_file.exists():
        return json.loads(res_file.read_text())
    t0 = time.perf_counter()
    res = train(_cfg("student_adaptconf", args, f"run.seed={seed}", f"optim.epochs={args.epochs}",
                     f"teacher.checkpoint={teacher}", f"run.output={out}", *over),
                role="student", resume=True, console=console)
    res["wall_s"] = time.perf_counter() - t0
    res_file.write_text(json.dumps(res))
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output)
    if args.fresh_start and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, quiet=not args.verbose)
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = sorted({int(k) for k in args.ks.split(",")} | {args.epochs})
    teacher = out / "teacher"
    if not (teacher / "result.json").exists():
        train(_cfg("teacher_linear", args, f"run.output={teacher}"), role="teacher", resume=True, console=console)
    stage1: dict[int, list[float]] = {k: [] for k in ks}
    acc: dict[str, dict[int, float]] = {"online": {}, **{f"store K={k}": {} for k in ks}}
    wall: dict[str, list[float]] = {key: [] for key in acc}
    for seed in seeds:
        for k in ks:
            store = out / f"store_k{k}_seed{seed}"
            if not (store / "zarr.json").exists():
                t0 = time.perf_counter()
                infer(_cfg("infer_teacher", args, f"run.seed={seed}", f"views.num_views={k}",
                           f"teacher.checkpoint={teacher}", f"teacher.store={store}"), console=console)
                stage1[k].append(time.perf_counter() - t0)
                (store.parent / f"{store.name}.seconds").write_text(str(stage1[k][-1]))
            else:
                stage1[k].append(float((store.parent / f"{store.name}.seconds").read_text()))
            r = _student(args, out / f"student_k{k}_seed{seed}", seed, teacher, console,
                         f"teacher.store={store}", f"views.num_views={k}", "teacher.mode=store", "views.sampling=cycle")
            acc[f"store K={k}"][seed], wall[f"store K={k}"] = r["test_acc"], wall[f"store K={k}"] + [r["wall_s"]]
        r = _student(args, out / f"online_seed{seed}", seed, teacher, console, "teacher.mode=online",
                     "views.sampling=fresh")
        acc["online"][seed], wall["online"] = r["test_acc"], wall["online"] + [r["wall_s"]]
    views = np.array([k + 1 for k in ks for _ in stage1[k]], dtype=np.float64)
    secs = np.array([s for k in ks for s in stage1[k]])
    c1, c0 = np.polyfit(views, secs, 1) if len(ks) > 1 else (secs.mean() / views.mean(), 0.0)
    if c1 <= 0:  # timing noise (a loaded machine) swamped the per-view cost: fall back to the ratio estimate
        c1, c0 = secs.sum() / views.sum(), 0.0
    online_teacher_s = args.epochs * c1
    rows = []
    for key in acc:
        m, sd, n = mean_std(acc[key].values())
        row: dict[str, Any] = {"regime": key, "seeds": n, "test_acc_mean": m, "test_acc_std": sd,
                               "student_wall_s": float(np.mean(wall[key]))}
        if key != "online":
            k = int(key.split("=")[1])
            d = paired_difference(acc[key], acc["online"])
            s1 = float(np.mean(stage1[k]))
            row.update(k=k, diff_mean=d.mean, diff_ci_low=d.ci_low, diff_ci_high=d.ci_high, diff_p=d.p_value,
                       stage1_s=s1, stage1_fraction=s1 / online_teacher_s)
        rows.append(row)
    _plot(rows, out / "cache_cost.png", args.epochs)
    return {"samples": args.limit, "test_samples": args.test_limit, "epochs": args.epochs, "seeds": seeds, "ks": ks,
            "per_seed": acc, "stage1_fit": {"fixed_s": float(c0), "per_view_pass_s": float(c1)},
            "online_teacher_s": online_teacher_s, "rows": rows, "figure": str(out / "cache_cost.png"),
            "machine": machine()}


def _plot(rows: list[dict[str, Any]], path: Path, epochs: int) -> None:
    """(b) - (a) per K with its 95% CI, and the stage-1 cost fraction on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = [r for r in rows if "k" in r]
    ks = [r["k"] for r in st]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    mean = np.array([100 * r["diff_mean"] for r in st])
    lo = np.array([100 * r["diff_ci_low"] for r in st])
    hi = np.array([100 * r["diff_ci_high"] for r in st])
    err = np.nan_to_num(np.stack([mean - lo, hi - mean]))
    ax.errorbar(ks, mean, yerr=err, marker="o", capsize=4, label="store K - online (95% CI)")
    ax.axhline(0, color="tab:gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel(f"stored augmented views K ({epochs} epochs)")
    ax.set_ylabel("test accuracy difference (points)")
    ax2 = ax.twinx()
    ax2.plot(ks, [r["stage1_fraction"] for r in st], color="tab:orange", marker="s", ls="--",
             label="stage-1 cost / online teacher cost")
    ax2.set_ylabel("stage-1 cost fraction", color="tab:orange")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.95), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(res: dict[str, Any]) -> str:
    lines = [f"Cache cost: AdaptConf student (`fmnist_cnn` <- `fmnist_linear`, weak labels only), "
             f"{res['samples']} training / {res['test_samples']} test images, {res['epochs']} epochs, "
             f"seeds {','.join(map(str, res['seeds']))}", "",
             "| regime | seeds | test acc (%) | store - online (points) | 95% CI | p (paired t) | stage-1 s | "
             "stage-1 / online teacher |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in res["rows"]:
        if "k" not in r:
            lines.append(f"| online, fresh views | {r['seeds']} | {plus_minus(r['test_acc_mean'], r['test_acc_std'])} "
                         f"| | | | | 1 (= {res['online_teacher_s']:.1f} s) |")
            continue
        ci = "" if np.isnan(r["diff_ci_low"]) else f"[{100 * r['diff_ci_low']:+.2f}, {100 * r['diff_ci_high']:+.2f}]"
        p = "" if np.isnan(r["diff_p"]) else f"{r['diff_p']:.3f}"
        lines.append(f"| store, K = {r['k']} | {r['seeds']} | {plus_minus(r['test_acc_mean'], r['test_acc_std'])} | "
                     f"{100 * r['diff_mean']:+.2f} | {ci} | {p} | {r['stage1_s']:.1f} | {r['stage1_fraction']:.2f} |")
    fit = res["stage1_fit"]
    lines += ["", f"stage-1 fit: {fit['fixed_s']:.2f} s + {fit['per_view_pass_s']:.2f} s per view pass; "
                  f"figure {res['figure']}", machine_line(res["machine"])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=6000, help="training images of each half (data.limit)")
    p.add_argument("--test-limit", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ks", default="1,2,4,8", help="store sizes K; K = epochs is always added")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (default: the Debian package)")
    p.add_argument("--output", default="runs/bench/cache_cost", help="runs, stores and the figure (finished runs are reused)")
    p.add_argument("--fresh-start", action="store_true", help="delete --output first")
    p.add_argument("--verbose", action="store_true", help="show the training runs' progress")
    emit(run, table, p.parse_args())


if __name__ == "__main__":
    main()
