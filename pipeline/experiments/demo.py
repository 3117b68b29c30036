"""``w2s demo``: the whole weak-to-strong experiment on Fashion-MNIST, one regime at a time.

A :class:`Regime` names its configs (teacher, store, ceiling, students) and the comparisons of
its table; ``docs/demo.md`` states the rule that fixed each one before any student ran.

- ``teacher_only`` (``configs/fmnist``, runs under ``full/``, or ``quick/`` with ``--quick``): half
  A trains a linear weak teacher; its views of half B are cached once; the strong ceiling learns
  half B's ground truth; KD, AugConf and AdaptConf students learn half B from the teacher alone
  (``gt_weight 0``, OpenAI's setting); an AdaptConf student also gets the ground truth
  (``gt_weight 1``), compared with the ceiling. ``quick`` runs the weak-only part with 3 epochs per
  strong model to finish in under 3 minutes.
- ``paper`` (``configs/fmnist/paper``, runs under ``paper/``): the teacher ``w2s select-settings``
  chose by rule 1 (error 1.10-1.45 times the ceiling's), students with ground truth + KD /
  AugConf / AdaptConf against the same CNN on ground truth alone, 80 epochs on 500 images per class.

For each seed the teacher, store, ceiling and students are retrained (init, batch order, views);
the halves stay fixed (``data.subset_seed``). Finished steps are skipped when the demo is run
again. Each table's paired comparisons are one family: Holm-adjusted p-values and
Bonferroni-adjusted intervals (rule 5).
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
from pipeline.experiments.regimes import ALPHA, error_ratio
from pipeline.experiments.report import pgr, plus_minus, report
from pipeline.experiments.runs import load_run
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.stats import holm, mean_std, paired_difference
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


@dataclass(frozen=True)
class Regime:
    """One table of the demo: its configs (under ``config_dir``), students and paired comparisons."""

    name: str
    config_dir: Path
    teacher: str  # config names, without .yaml
    teacher_label: str
    ceiling_label: str
    students: tuple[Student, ...]
    pairs: tuple[tuple[str, str], ...]  # (a, b): a - b paired over seeds
    infer: str = "infer_teacher"
    ceiling: str = "ceiling_cnn"


WEAK_ONLY = (Student("student_kd", "KD", "student_kd"),
             Student("student_augconf", "AugConf", "student_augconf"),
             Student("student_adaptconf", "AdaptConf", "student_adaptconf"))
WITH_GT = (Student("student_gt_adaptconf", "ground truth + AdaptConf", "student_adaptconf", ("objective.gt_weight=1.0",)),)
# the paper regime's configs carry gt_weight 1 themselves
PAPER_STUDENTS = (Student("student_gt_kd", "ground truth + KD", "student_kd"),
                  Student("student_gt_augconf", "ground truth + AugConf", "student_augconf"),
                  Student("student_gt_adaptconf", "ground truth + AdaptConf", "student_adaptconf"))
OBJECTIVE_ORDER = (("student_adaptconf", "student_kd"), ("student_adaptconf", "student_augconf"),
                   ("student_augconf", "student_kd"))
TEACHER_ONLY = Regime(
    "teacher_only", CONFIG_DIR, "teacher_linear", "weak teacher (`fmnist_linear`, half A)",
    "strong ceiling (`fmnist_cnn`, half B, ground truth)", WEAK_ONLY + WITH_GT,
    OBJECTIVE_ORDER + (("student_gt_adaptconf", "strong_ceiling"),))
PAPER = Regime(
    "paper", CONFIG_DIR / "paper", "teacher_cnn_w8", "weak teacher (`fmnist_cnn` w8, 30 epochs, 5,000 of half A)",
    "ceiling (`fmnist_cnn`, 5,000 of half B, ground truth alone)", PAPER_STUDENTS,
    tuple((s.name, "strong_ceiling") for s in PAPER_STUDENTS)
    + tuple((a.replace("student_", "student_gt_"), b.replace("student_", "student_gt_")) for a, b in OBJECTIVE_ORDER))
REGIMES = {r.name: r for r in (TEACHER_ONLY, PAPER)}
QUICK_TRUST = ("one quick seed is a smoke test, not a comparison: with 3 of the recipe's 10 epochs, seeds 0-2 put "
               "these students 0.6 points below to 0.6 above the weak teacher, and which objective came first changed "
               "with the seed (`w2s demo --quick --seeds 0,1,2`, docs/demo.md); the full demo over 3 seeds is the measurement")
ONE_SEED = "one seed is a smoke test, not a comparison: the tables of docs/demo.md come from 5 seeds (rule 5)"


def run_demo(output: str | Path, quick: bool = False, data_dir: str | None = None, seeds: tuple[int, ...] = (0,),
             console: Console | None = None, regime: str = "teacher_only") -> str:
    """Run every step of ``regime`` for every seed under ``output`` and return its markdown table (also in
    ``report/demo.md``)."""
    console = console or stderr_console()
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    if quick and regime != "teacher_only":
        raise ValueError("--quick is the teacher-only regime's short run; leave it out for --regime " + regime)
    spec = REGIMES[regime]
    students = WEAK_ONLY if quick else spec.students
    spec = Regime(spec.name, spec.config_dir, spec.teacher, spec.teacher_label, spec.ceiling_label, students,
                  tuple(p for p in spec.pairs if {p[0], p[1]} <= {"strong_ceiling", *(s.name for s in students)}))
    out = Path(output) / ("quick" if quick else "full" if regime == "teacher_only" else regime)
    start = time.perf_counter()
    for seed in seeds:
        _run_seed(spec, out / f"seed{seed}", seed, quick, data_dir, console)
    table = demo_table([out / f"seed{s}" for s in seeds], spec)
    report_dir = out / "report"
    report([out / f"seed{s}" / st.name for s in seeds for st in students], report_dir,
           weak_paths=[out / f"seed{s}" / "weak_teacher" for s in seeds],
           ceiling_paths=[out / f"seed{s}" / "strong_ceiling" for s in seeds], label_of=lambda r: r.path.name)
    (report_dir / "demo.md").write_text(table + "\n")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; table {report_dir / 'demo.md'}, "
                  f"figures {report_dir}/*.png")
    print(table)
    if len(seeds) == 1:
        print("\n" + (QUICK_TRUST if quick else ONE_SEED))
    return table


def _run_seed(spec: Regime, out: Path, seed: int, quick: bool, data_dir: str | None, console: Console) -> None:
    """One seed's weak teacher, store, ceiling and students (each skipped when already finished)."""
    common = [f"run.seed={seed}"] + ([f"data.data_dir={data_dir}"] if data_dir else [])
    strong = common + ([f"optim.epochs={QUICK_EPOCHS}"] if quick else [])
    teacher_dir, store_dir = out / "weak_teacher", out / "store"

    def config(name: str, overrides: list[str]) -> Config:
        return load_config(spec.config_dir / f"{name}.yaml", overrides)

    def step(title: str, run_dir: Path, fn: Callable[[], Any]) -> None:
        if (run_dir / "result.json").exists():
            console.print(f"[dim]{title}: done already ({run_dir})[/dim]")
            return
        console.rule(f"{spec.name}, seed {seed}: {title}")
        fn()

    step("weak teacher", teacher_dir, lambda: train(
        config(spec.teacher, common + [f"run.output={teacher_dir}"]), role="teacher", resume=True, console=console))
    console.rule(f"{spec.name}, seed {seed}: infer-teacher on the students' images")
    teacher_args = [f"teacher.checkpoint={teacher_dir}", f"teacher.store={store_dir}"]
    infer(config(spec.infer, common + teacher_args), console=console)
    ceiling_dir = out / "strong_ceiling"
    step("ceiling (ground truth)", ceiling_dir, lambda: train(
        config(spec.ceiling, strong + [f"run.output={ceiling_dir}"]), role="teacher", resume=True, console=console))
    for st in spec.students:
        d = out / st.name
        step(f"{st.label} student", d, lambda st=st, d=d: train(
            config(st.config, strong + teacher_args + list(st.overrides) + [f"run.output={d}"]),
            role="student", resume=True, console=console))


def demo_table(seed_dirs: list[Path], spec: Regime) -> str:
    """The regime's table: accuracy mean +- std over seeds (n shown; no spread from one seed), PGR per seed,
    agreement, the weak-supervision stopping rule's epoch and test accuracy, each seed's error ratio, and the
    paired differences of ``spec.pairs`` as one Holm-Bonferroni family."""
    names = ["weak_teacher", "strong_ceiling", *(s.name for s in spec.students)]
    labels = {"weak_teacher": spec.teacher_label, "strong_ceiling": spec.ceiling_label,
              **{s.name: f"{s.label} student" for s in spec.students}}
    acc: dict[str, dict[int, float]] = {n: {} for n in names}
    agree: dict[str, list[float]] = {n: [] for n in names}
    stop: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    for d in seed_dirs:
        seed = int(d.name.removeprefix("seed"))
        for n in names:
            r = load_run(d / n)
            acc[n][seed] = r.test_acc
            if r.result.get("test_agreement") is not None:
                agree[n].append(r.result["test_agreement"])
            if r.result.get("test_acc_at_best") is not None:
                stop[n].append((r.result["best_epoch"], r.result["test_acc_at_best"]))
    pgrs = {n: [pgr(acc[n][s], acc["weak_teacher"][s], acc["strong_ceiling"][s]) for s in acc[n]] for n in names}
    with_stop = any(stop.values())
    head = "| run | seeds | test acc (%) | PGR | agreement with teacher (%) |"
    lines = [head + (" stopping rule: epochs, test acc (%) |" if with_stop else ""),
             "|---|---:|---:|---:|---:|" + ("---|" if with_stop else "")]
    for n in names:
        m, sd, k = mean_std(acc[n].values())
        pm, ps, _ = mean_std(pgrs[n])
        am, _, _ = mean_std(agree[n])
        row = (f"| {labels[n]} | {k} | {plus_minus(m, sd)} | "
               f"{'' if n == 'weak_teacher' else plus_minus(pm, ps, 1.0, 3)} | {plus_minus(am, math.nan)} |")
        if with_stop:
            sm, ss, _ = mean_std(a for _, a in stop[n])
            row += (f" {'/'.join(str(e + 1) for e, _ in stop[n])}, {plus_minus(sm, ss)} |" if stop[n] else " |")
        lines.append(row)
    ratios = ", ".join(f"seed {s} {error_ratio(acc['weak_teacher'][s], acc['strong_ceiling'][s]):.2f}"
                       for s in sorted(acc["weak_teacher"]))
    lines += ["", f"error ratio r = err_teacher / err_ceiling: {ratios}"]
    pairs = [(a, b) for a, b in spec.pairs if a in names and b in names]
    diffs = [paired_difference(acc[a], acc[b]) for a, b in pairs]
    m = len(pairs)
    level = 1 - ALPHA / m
    wide = [paired_difference(acc[a], acc[b], level) for a, b in pairs]
    adjusted = holm([d.p_value for d in diffs])
    lines += ["", f"| a - b, paired over seeds | seeds | difference (points) | {100 * level:.2f}% CI (Bonferroni, "
                  f"{m} comparisons) | p (paired t) | p (Holm) | Holm, family-wise {ALPHA} |",
              "|---|---:|---:|---|---:|---:|---|"]
    for (a, b), d, w, p_holm in zip(pairs, diffs, wide, adjusted):
        ci = "" if math.isnan(w.ci_low) else f"[{100 * w.ci_low:+.2f}, {100 * w.ci_high:+.2f}]"
        p = "" if math.isnan(d.p_value) else f"{d.p_value:.3f}"
        verdict = "" if math.isnan(p_holm) else ("differs" if p_holm < ALPHA else "not significant")
        lines.append(f"| {labels[a]} - {labels[b]} | {d.n} | {100 * d.mean:+.2f} | {ci} | {p} | "
                     f"{'' if math.isnan(p_holm) else f'{p_holm:.3f}'} | {verdict} |")
    return "\n".join(lines)
