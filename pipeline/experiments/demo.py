"""``w2s demo``: the whole weak-to-strong experiment on Fashion-MNIST, from the configs in configs/fmnist.

For each seed: half A of the training set trains the weak teacher; its views of half B are cached
once; the strong ceiling learns half B's ground truth; KD, AugConf and AdaptConf students learn
half B from the teacher alone (``gt_weight 0``, the weak-to-strong setting); an AdaptConf student
also learns half B's ground truth plus the teacher (``gt_weight 1``, the paper's CIFAR setting),
compared with the ceiling, which is the same student on ground truth alone. The seed
varies everything a real repeat varies: initializations, batch order and the views (teacher,
store and ceiling); the halves stay fixed (``data.subset_seed``). ``quick`` runs the weak-only
part of the same experiment (same data, teacher and store) with 3 epochs per strong model instead
of the recipe's 10, to finish in under 3 minutes. Finished steps are skipped when the demo is run
again.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from pipeline.config.schema import Config, load_config
from pipeline.infer_teacher import infer
from pipeline.experiments.report import pgr, plus_minus, report
from pipeline.experiments.runs import load_run
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.stats import mean_std, paired_difference
from pipeline.train_student import train

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "fmnist"
QUICK_EPOCHS = 3  # fixed before any quick result was looked at: the recipe's data, 3 epochs per strong model


@dataclass(frozen=True)
class Student:
    """One student of the demo: its run name, config file and objective overrides."""

    name: str
    label: str
    config: str
    overrides: tuple[str, ...] = ()


WEAK_ONLY = (Student("student_kd", "KD", "student_kd"),
             Student("student_augconf", "AugConf", "student_augconf"),
             Student("student_adaptconf", "AdaptConf", "student_adaptconf"))
WITH_GT = (Student("student_gt_adaptconf", "ground truth + AdaptConf", "student_adaptconf", ("objective.gt_weight=1.0",)),)
# (a, b) pairs compared seed by seed: the objectives' order, and each gt + teacher run against the ceiling
PAIRS = (("student_adaptconf", "student_kd"), ("student_adaptconf", "student_augconf"), ("student_augconf", "student_kd"),
         ("student_gt_adaptconf", "strong_ceiling"))
QUICK_TRUST = ("one quick seed is a smoke test, not a comparison: with 3 of the recipe's 10 epochs, seeds 0-2 put "
               "these students 0.6 points below to 0.6 above the weak teacher, and which objective came first changed "
               "with the seed (`w2s demo --quick --seeds 0,1,2`, docs/demo.md); the full demo over 3 seeds is the measurement")


def _config(name: str, overrides: list[str]) -> Config:
    return load_config(CONFIG_DIR / f"{name}.yaml", overrides)


def run_demo(output: str | Path, quick: bool = False, data_dir: str | None = None, seeds: tuple[int, ...] = (0,),
             console: Console | None = None) -> str:
    """Run every step for every seed under ``output`` and return the markdown table (also in ``report/demo.md``)."""
    console = console or stderr_console()
    out = Path(output) / ("quick" if quick else "full")
    start = time.perf_counter()
    students = WEAK_ONLY if quick else WEAK_ONLY + WITH_GT
    for seed in seeds:
        _run_seed(out / f"seed{seed}", seed, quick, data_dir, students, console)
    table = demo_table([out / f"seed{s}" for s in seeds], students)
    report_dir = out / "report"
    report([out / f"seed{s}" / st.name for s in seeds for st in students], report_dir,
           weak_paths=[out / f"seed{s}" / "weak_teacher" for s in seeds],
           ceiling_paths=[out / f"seed{s}" / "strong_ceiling" for s in seeds], label_of=lambda r: r.path.name)
    (report_dir / "demo.md").write_text(table + "\n")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; table {report_dir / 'demo.md'}, "
                  f"figures {report_dir}/*.png")
    print(table)
    if quick and len(seeds) == 1:
        print("\n" + QUICK_TRUST)
    return table


def _run_seed(out: Path, seed: int, quick: bool, data_dir: str | None, students: tuple[Student, ...],
              console: Console) -> None:
    """One seed's weak teacher, store, ceiling and students (each skipped when already finished)."""
    common = [f"run.seed={seed}"] + ([f"data.data_dir={data_dir}"] if data_dir else [])
    strong = common + ([f"optim.epochs={QUICK_EPOCHS}"] if quick else [])
    teacher_dir, store_dir = out / "weak_teacher", out / "store"

    def step(title: str, run_dir: Path, fn: Callable[[], Any]) -> None:
        if (run_dir / "result.json").exists():
            console.print(f"[dim]{title}: done already ({run_dir})[/dim]")
            return
        console.rule(f"seed {seed}: {title}")
        fn()

    step("weak teacher on half A", teacher_dir, lambda: train(
        _config("teacher_linear", common + [f"run.output={teacher_dir}"]), role="teacher", resume=True,
        console=console))
    console.rule(f"seed {seed}: infer-teacher on half B")
    teacher_args = [f"teacher.checkpoint={teacher_dir}", f"teacher.store={store_dir}"]
    infer(_config("infer_teacher", common + teacher_args), console=console)
    ceiling_dir = out / "strong_ceiling"
    step("strong ceiling on half B (ground truth)", ceiling_dir, lambda: train(
        _config("ceiling_cnn", strong + [f"run.output={ceiling_dir}"]), role="teacher", resume=True,
        console=console))
    for st in students:
        d = out / st.name
        step(f"{st.label} student on half B", d, lambda st=st, d=d: train(
            _config(st.config, strong + teacher_args + list(st.overrides) + [f"run.output={d}"]),
            role="student", resume=True, console=console))


def demo_table(seed_dirs: list[Path], students: tuple[Student, ...]) -> str:
    """Accuracy mean +- std over seeds (n shown; no spread from one seed), PGR per seed, agreement, and the
    paired differences of :data:`PAIRS` among the runs present."""
    names = ["weak_teacher", "strong_ceiling", *(s.name for s in students)]
    labels = {"weak_teacher": "weak teacher (`fmnist_linear`, half A)",
              "strong_ceiling": "strong ceiling (`fmnist_cnn`, half B, ground truth)",
              **{s.name: f"{s.label} student" for s in students}}
    acc: dict[str, dict[int, float]] = {n: {} for n in names}
    agree: dict[str, list[float]] = {n: [] for n in names}
    for d in seed_dirs:
        seed = int(d.name.removeprefix("seed"))
        for n in names:
            r = load_run(d / n)
            acc[n][seed] = r.test_acc
            if r.result.get("test_agreement") is not None:
                agree[n].append(r.result["test_agreement"])
    pgrs = {n: [pgr(acc[n][s], acc["weak_teacher"][s], acc["strong_ceiling"][s]) for s in acc[n]] for n in names}
    lines = ["| run | seeds | test acc (%) | PGR | agreement with teacher (%) |", "|---|---:|---:|---:|---:|"]
    for n in names:
        m, sd, k = mean_std(acc[n].values())
        pm, ps, _ = mean_std(pgrs[n])
        am, _, _ = mean_std(agree[n])
        lines.append(f"| {labels[n]} | {k} | {plus_minus(m, sd)} | "
                     f"{'' if n == 'weak_teacher' else plus_minus(pm, ps, 1.0, 3)} | {plus_minus(am, math.nan)} |")
    lines += ["", "| a - b, paired over seeds | seeds | difference (points) | 95% CI | p (paired t) |",
              "|---|---:|---:|---|---:|"]
    for a, b in (p for p in PAIRS if p[0] in names and p[1] in names):
        d = paired_difference(acc[a], acc[b])
        ci = "" if math.isnan(d.ci_low) else f"[{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]"
        p = "" if math.isnan(d.p_value) else f"{d.p_value:.3f}"
        lines.append(f"| {labels[a]} - {labels[b]} | {d.n} | {100 * d.mean:+.2f} | {ci} | {p} |")
    return "\n".join(lines)

