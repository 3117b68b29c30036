"""``w2s demo``: the whole weak-to-strong experiment on Fashion-MNIST, one regime at a time.

A :class:`Regime` names its configs (teacher, store, ceiling, students) and the comparisons of
its table; ``docs/demo.md`` states the rule that fixed each one before any student ran.

- ``teacher_only`` (``configs/fmnist``, runs under ``full/``, or ``quick/`` with ``--quick``): half
  A trains a linear weak teacher; its views of half B are cached once; the strong ceiling learns
  half B's ground truth; KD, AugConf and AdaptConf students learn half B from the teacher alone
  (``gt_weight 0``, OpenAI's setting); an AdaptConf student also gets the ground truth
  (``gt_weight 1``), compared with the ceiling. The ceiling and students hold out 10 % (rule 6).
  ``quick`` runs the weak-only part with 3 epochs per strong model and no hold-out to finish in under
  3 minutes.
- ``objectives`` (rule 7, runs beside the teacher-only ones, sharing their teacher, store, ceiling and
  KD / AugConf / AdaptConf students): every other registered weak-to-strong objective from the teacher
  alone, and AdaptConf from a second teacher (``teacher_mlp``) alone and from both teachers' stores.
- ``paper`` (``configs/fmnist/paper``, runs under ``paper/``): the teacher ``w2s select-settings``
  chose by rule 1 (error 1.10-1.45 times the ceiling's), students with ground truth + KD /
  AugConf / AdaptConf against the same CNN on ground truth alone, 80 epochs on 500 images per class.
- ``finetune`` and ``probe`` (rule 3, runs beside the teacher-only ones, whose teacher and store
  they share): the CNN starts from the shipped SimCLR prior (``priors/fmnist_cnn_simclr``) and is
  fine-tuned (the paper's ImageNet protocol) or trained as a linear probe on its frozen backbone
  (OpenAI's), from the teacher alone, against its own ceiling (the same protocol with ground truth).

Before any student, seed 0's teacher and ceiling are checked against the regime's rule; a regime
that fails it is reported as not reached and trains no student.

For each seed the teacher, store, ceiling and students are retrained (init, batch order, views);
the halves stay fixed (``data.subset_seed``). Finished steps are skipped when the demo is run
again. Each table's paired comparisons are one family: Holm-adjusted p-values and
Bonferroni-adjusted intervals (rule 5).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from pipeline.config.schema import Config, load_config
from pipeline.engine.checkpoint import write_json
from pipeline.infer_teacher import infer
from pipeline.experiments.regimes import ALPHA, error_ratio, paper_regime, teacher_only_regime
from pipeline.experiments.report import pgr, plus_minus, report
from pipeline.experiments.runs import finished_with, load_run
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.stats import holm, mean_std, paired_difference, t_interval
from pipeline.train_student import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs" / "fmnist"
PRIOR = ROOT / "priors" / "fmnist_cnn_simclr"  # w2s pretrain's SimCLR fmnist_cnn, shipped (docs/demo.md)
NUM_CLASSES = 10
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
    """One table of the demo: its configs (under ``config_dir``), students, paired comparisons and rule."""

    name: str
    config_dir: Path
    teacher: str  # config names, without .yaml
    teacher_label: str
    ceiling_label: str
    students: tuple[Student, ...]
    pairs: tuple[tuple[str, str], ...]  # (a, b): a - b paired over seeds
    rule: str  # the rule of docs/demo.md its seed-0 teacher and ceiling must meet
    dir_name: str = ""  # the runs' folder under --output (default: the regime's name)
    infer: str = "infer_teacher"
    ceiling: str = "ceiling_cnn"
    ceiling_run: str = "strong_ceiling"
    ceiling_overrides: tuple[str, ...] = ()
    second_teacher: str = ""  # config of a second weak teacher (run weak_teacher_2, store store_2), if any
    second_teacher_overrides: tuple[str, ...] = ()
    second_teacher_label: str = ""

    def holds(self, teacher_acc: float, ceiling_acc: float) -> bool:
        """Whether a teacher and ceiling meet the regime's rule."""
        return RULES[self.rule](teacher_acc, ceiling_acc)


# each regime's rule (docs/demo.md) by the name its tables print
RULES: dict[str, Callable[[float, float], bool]] = {
    "rule 1 (paper regime)": paper_regime,
    "rule 2 (teacher-only)": lambda t, c: teacher_only_regime(t, c, NUM_CLASSES),
    "rule 3 (pretrained student)": lambda t, c: teacher_only_regime(t, c, NUM_CLASSES),
}


WEAK_ONLY = (Student("student_kd", "KD", "student_kd"),
             Student("student_augconf", "AugConf", "student_augconf"),
             Student("student_adaptconf", "AdaptConf", "student_adaptconf"))
HOLD_OUT = ("data.val_fraction=0.1",)  # rule 6: ceilings score it against ground truth
TEACHER_HOLD_OUT = (*HOLD_OUT, "teacher.label_val=true")  # students, against the teacher (the stopping rule)


def held_out(students: tuple[Student, ...]) -> tuple[Student, ...]:
    """``students`` holding out 10 % scored against the teacher (rule 6)."""
    return tuple(replace(s, overrides=(*TEACHER_HOLD_OUT, *s.overrides)) for s in students)


WITH_GT = (Student("student_gt_adaptconf", "ground truth + AdaptConf", "student_adaptconf", ("objective.gt_weight=1.0",)),)
# the paper regime's configs carry gt_weight 1 themselves
PAPER_STUDENTS = (Student("student_gt_kd", "ground truth + KD", "student_kd"),
                  Student("student_gt_augconf", "ground truth + AugConf", "student_augconf"),
                  Student("student_gt_adaptconf", "ground truth + AdaptConf", "student_adaptconf"))
OBJECTIVE_ORDER = (("student_adaptconf", "student_kd"), ("student_adaptconf", "student_augconf"),
                   ("student_augconf", "student_kd"))
TEACHER_ONLY = Regime(
    "teacher_only", CONFIG_DIR, "teacher_linear", "weak teacher (`fmnist_linear`, half A)",
    "strong ceiling (`fmnist_cnn`, half B, ground truth)", held_out(WEAK_ONLY + WITH_GT),
    OBJECTIVE_ORDER + (("student_gt_adaptconf", "strong_ceiling"),), "rule 2 (teacher-only)", dir_name="full",
    ceiling_overrides=HOLD_OUT)
# rule 7: each objective at its source's defaults (docs/objectives.md), the rest of student_kd.yaml's recipe
OTHER_OBJECTIVES = held_out((
    Student("student_logconf", "LogConf", "student_kd", ("objective.name=logconf",)),
    Student("student_product", "product", "student_kd", ("objective.name=product",)),
    Student("student_bootstrap_soft", "soft bootstrapping", "student_kd", ("objective.name=bootstrap_soft",)),
    Student("student_bootstrap_hard", "hard bootstrapping", "student_kd", ("objective.name=bootstrap_hard",)),
    # mdistiller's warm-up, 20 of 240 epochs (mdistiller/engine/cfg.py), as the same share of 10 epochs
    Student("student_dkd", "DKD", "student_kd",
            ("objective.name=dkd", "objective.dkd_target=teacher", "objective.dkd_warmup=0.8333")),
    Student("student_mlp_adaptconf", "AdaptConf (MLP teacher alone)", "student_adaptconf",
            ("teacher.checkpoint={out}/weak_teacher_2", "teacher.store={out}/store_2"))))
TWO_STORES = ("teacher.checkpoint=null", "teacher.store=null", "teacher.stores=[{out}/store, {out}/store_2]")
CO_SUPERVISED = tuple(  # no single teacher's weights, so no teacher-scored hold-out: the same images held out
    Student(f"student_two_{combine}", f"AdaptConf (both teachers, {combine})", "student_adaptconf",
            (*HOLD_OUT, *TWO_STORES, f"teacher.combine={combine}")) for combine in ("mean", "max_confidence"))
OBJECTIVES = Regime(
    "objectives", CONFIG_DIR, "teacher_linear", TEACHER_ONLY.teacher_label, TEACHER_ONLY.ceiling_label,
    held_out(WEAK_ONLY) + OTHER_OBJECTIVES + CO_SUPERVISED,
    tuple((s.name, "student_adaptconf") for s in (*WEAK_ONLY[:2], *OTHER_OBJECTIVES, *CO_SUPERVISED)
          if s.name != "student_mlp_adaptconf")
    + tuple((s.name, "student_mlp_adaptconf") for s in CO_SUPERVISED),
    "rule 2 (teacher-only)", dir_name="full", ceiling_overrides=HOLD_OUT, second_teacher="teacher_mlp",
    second_teacher_overrides=("model.kwargs={hidden: 16}",),
    second_teacher_label="second weak teacher (`fmnist_mlp` hidden 16, half A)")
PAPER = Regime(
    "paper", CONFIG_DIR / "paper", "teacher_cnn_w8", "weak teacher (`fmnist_cnn` w8, 30 epochs, 5,000 of half A)",
    "ceiling (`fmnist_cnn`, 5,000 of half B, ground truth alone)", PAPER_STUDENTS,
    tuple((s.name, "strong_ceiling") for s in PAPER_STUDENTS)
    + tuple((a.replace("student_", "student_gt_"), b.replace("student_", "student_gt_")) for a, b in OBJECTIVE_ORDER),
    "rule 1 (paper regime)")


def _pretrained(name: str, label: str, extra: tuple[str, ...], ceiling: str) -> Regime:
    """A rule-3 regime: the SimCLR prior fine-tuned or probed from the teacher-only regime's teacher and store,
    10 % held out (rule 6: labelled by the teacher for students, ground truth for the ceiling)."""
    prior = (f"model.pretrained={PRIOR}", "data.val_fraction=0.1", *extra)

    def run(student: str) -> str:
        return f"{name}_{student.removeprefix('student_')}"

    students = tuple(Student(run(s.name), f"{label} {s.label}", s.config, (*prior, "teacher.label_val=true"))
                     for s in WEAK_ONLY)
    return Regime(name, CONFIG_DIR, "teacher_linear", TEACHER_ONLY.teacher_label,
                  f"ceiling ({label}, half B, ground truth)", students,
                  tuple((run(a), run(b)) for a, b in OBJECTIVE_ORDER), "rule 3 (pretrained student)",
                  dir_name="full", ceiling=ceiling, ceiling_run=f"{name}_ceiling", ceiling_overrides=prior)


FINETUNE = _pretrained("finetune", "SimCLR prior fine-tuned", (), "ceiling_cnn")
PROBE = _pretrained("probe", "SimCLR prior, linear probe", ("model.freeze_backbone=true", "optim.weight_decay=0"),
                    "probe_simclr")
REGIMES = {r.name: r for r in (TEACHER_ONLY, PAPER, FINETUNE, PROBE, OBJECTIVES)}
QUICK_TRUST = ("one quick seed is a smoke test, not a comparison: with 3 of the recipe's 10 epochs, seeds 0-2 put "
               "these students 0.6 points below to 0.6 above the weak teacher, and which objective came first changed "
               "with the seed (`w2s demo --quick --seeds 0,1,2`, docs/demo.md); the full demo over 5 seeds is the measurement")
ONE_SEED = "one seed is a smoke test, not a comparison: the tables of docs/demo.md come from 5 seeds (rule 5)"


def run_demo(output: str | Path, quick: bool = False, data_dir: str | None = None, seeds: tuple[int, ...] = (0,),
             console: Console | None = None, regime: str = "teacher_only") -> str:
    """Run every step of ``regime`` for every seed under ``output`` and return its markdown table (also in
    ``report/demo.md``, ``report_<regime>/`` for the regimes that share the teacher-only runs' folder)."""
    console = console or stderr_console()
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    if quick and regime != "teacher_only":
        raise ValueError("--quick is the teacher-only regime's short run; leave it out for --regime " + regime)
    spec = REGIMES[regime]
    if quick:
        spec = replace(spec, students=WEAK_ONLY, pairs=OBJECTIVE_ORDER, ceiling_overrides=())
    out = Path(output) / ("quick" if quick else spec.dir_name or spec.name)
    report_dir = out / ("report" if spec.name in ("teacher_only", "paper") else f"report_{spec.name}")
    start = time.perf_counter()
    gate = ""
    if not quick:  # the quick demo is a smoke test of the pipeline, not a setting of its own
        run_teacher_and_ceiling(spec, out / "seed0", 0, quick, data_dir, console)  # the rule's seed, first
        gate = _gate(spec, out / "seed0")
    if gate:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "demo.md").write_text(gate + "\n")
        console.print(gate, highlight=False)
        print(gate)
        return gate
    for seed in seeds:
        run_teacher_and_ceiling(spec, out / f"seed{seed}", seed, quick, data_dir, console)
        _run_students(spec, out / f"seed{seed}", seed, quick, data_dir, console)
    table = demo_table([out / f"seed{s}" for s in seeds], spec)
    write_json(report_dir / "demo.json", demo_record([out / f"seed{s}" for s in seeds], spec))
    report([out / f"seed{s}" / st.name for s in seeds for st in spec.students], report_dir,
           weak_paths=[out / f"seed{s}" / "weak_teacher" for s in seeds],
           ceiling_paths=[out / f"seed{s}" / spec.ceiling_run for s in seeds], label_of=lambda r: r.path.name)
    (report_dir / "demo.md").write_text(table + "\n")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; table {report_dir / 'demo.md'}, "
                  f"figures {report_dir}/*.png")
    print(table)
    if len(seeds) == 1:
        print("\n" + (QUICK_TRUST if quick else ONE_SEED))
    return table


def _gate(spec: Regime, seed0: Path) -> str:
    """Empty when seed 0's teacher and ceiling meet the regime's rule; else the line that says it is not reached."""
    teacher, ceiling = load_run(seed0 / "weak_teacher").test_acc, load_run(seed0 / spec.ceiling_run).test_acc
    if spec.holds(teacher, ceiling):
        return ""
    return (f"{spec.name} regime not reached: seed 0's teacher {100 * teacher:.2f} % and ceiling {100 * ceiling:.2f} % "
            f"(r = {error_ratio(teacher, ceiling):.2f}) fail {spec.rule} of docs/demo.md, so no student is trained")


def _overrides(seed: int, quick: bool, data_dir: str | None) -> tuple[list[str], list[str]]:
    common = [f"run.seed={seed}"] + ([f"data.data_dir={data_dir}"] if data_dir else [])
    return common, common + ([f"optim.epochs={QUICK_EPOCHS}"] if quick else [])


def _step(spec: Regime, seed: int, title: str, cfg: Config, console: Console, fn: Callable[[], Any]) -> None:
    """Run ``fn`` unless ``cfg``'s run is finished; a finished run made with other settings is refused, never
    reused (a changed config or rule would otherwise put old numbers in the new table)."""
    run_dir = Path(cfg.run.output)
    if finished_with(run_dir, cfg.to_dict()):
        console.print(f"[dim]{title}: done already ({run_dir})[/dim]")
        return
    console.rule(f"{spec.name}, seed {seed}: {title}")
    fn()


def _config(spec: Regime, name: str, overrides: list[str]) -> Config:
    return load_config(spec.config_dir / f"{name}.yaml", overrides)


def run_teacher_and_ceiling(spec: Regime, out: Path, seed: int, quick: bool, data_dir: str | None,
                             console: Console) -> None:
    """One seed's weak teacher(s) and ceiling (each skipped when already finished with the same config)."""
    common, strong = _overrides(seed, quick, data_dir)
    runs = [("weak teacher", spec.teacher, common, out / "weak_teacher"),
            ("ceiling (ground truth)", spec.ceiling, strong + list(spec.ceiling_overrides), out / spec.ceiling_run)]
    if spec.second_teacher:
        runs.append(("second weak teacher", spec.second_teacher, common + list(spec.second_teacher_overrides),
                     out / "weak_teacher_2"))
    for title, name, overrides, run_dir in runs:
        cfg = _config(spec, name, overrides + [f"run.output={run_dir}"])
        _step(spec, seed, title, cfg, console, lambda cfg=cfg: train(cfg, role="teacher", resume=True, console=console))


def _run_students(spec: Regime, out: Path, seed: int, quick: bool, data_dir: str | None, console: Console) -> None:
    """One seed's store(s) (left as they are when complete) and students (each skipped when already finished)."""
    common, strong = _overrides(seed, quick, data_dir)
    console.rule(f"{spec.name}, seed {seed}: infer-teacher on the students' images")
    teacher_args = [f"teacher.checkpoint={out / 'weak_teacher'}", f"teacher.store={out / 'store'}"]
    infer(_config(spec, spec.infer, common + teacher_args), console=console)
    if spec.second_teacher:
        console.rule(f"{spec.name}, seed {seed}: infer-teacher, second teacher")
        infer(_config(spec, spec.infer, common + [f"teacher.checkpoint={out / 'weak_teacher_2'}",
                                                  f"teacher.store={out / 'store_2'}"]), console=console)
    for st in spec.students:
        own = [o.format(out=out) for o in st.overrides]  # {out}: this seed's folder
        cfg = _config(spec, st.config, strong + teacher_args + own + [f"run.output={out / st.name}"])
        _step(spec, seed, f"{st.label} student", cfg, console,
              lambda cfg=cfg: train(cfg, role="student", resume=True, console=console))


def demo_record(seed_dirs: list[Path], spec: Regime) -> dict[str, Any]:
    """What a regime's table rests on, per seed and run (``report/demo.json``; shipped copies in docs/results/
    are checked against the rule by the tests): test accuracy, agreement and the stopping rule's epoch."""
    runs = [*_teachers(spec), spec.ceiling_run, *(s.name for s in spec.students)]
    seeds: dict[str, dict[str, Any]] = {}
    for d in seed_dirs:
        seeds[d.name.removeprefix("seed")] = {
            n: {k: load_run(d / n).result.get(k) for k in ("test_acc", "test_agreement", "best_epoch", "test_acc_at_best")}
            for n in runs}
    return {"regime": spec.name, "rule": spec.rule, "teacher": "weak_teacher", "ceiling": spec.ceiling_run,
            **({"second_teacher": "weak_teacher_2"} if spec.second_teacher else {}),
            "students": [s.name for s in spec.students], "seeds": seeds}


def _teachers(spec: Regime) -> list[str]:
    return ["weak_teacher", *(["weak_teacher_2"] if spec.second_teacher else [])]


def demo_table(seed_dirs: list[Path], spec: Regime) -> str:
    """The regime's table: accuracy mean +- std over seeds (n shown; no spread from one seed), PGR per seed,
    agreement, the weak-supervision stopping rule's epoch and test accuracy, each seed's error ratio, and the
    paired differences of ``spec.pairs`` as one Holm-Bonferroni family."""
    ceiling = spec.ceiling_run
    names = [*_teachers(spec), ceiling, *(s.name for s in spec.students)]
    students = {s.name for s in spec.students}
    labels = {"weak_teacher": spec.teacher_label, "weak_teacher_2": spec.second_teacher_label, ceiling: spec.ceiling_label,
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
            # a student's stopping rule only where the teacher scored its hold-out (never ground truth)
            teacher_scored = n not in students or r.result.get("val_labels") == "teacher"
            if r.result.get("test_acc_at_best") is not None and teacher_scored:
                stop[n].append((r.result["best_epoch"], r.result["test_acc_at_best"]))
    pgrs = {n: [pgr(acc[n][s], acc["weak_teacher"][s], acc[ceiling][s]) for s in acc[n]] for n in names}
    with_stop = any(stop.values())
    head = "| run | seeds | test acc (%) | PGR | PGR 95% CI | agreement with teacher (%) |"
    lines = [head + (" stopping rule: epochs, test acc (%) |" if with_stop else ""),
             "|---|---:|---:|---:|---|---:|" + ("---|" if with_stop else "")]
    for n in names:
        m, sd, k = mean_std(acc[n].values())
        pm, ps, _ = mean_std(pgrs[n])
        lo, hi = t_interval(pgrs[n])
        am, _, _ = mean_std(agree[n])
        student = n in students
        ci = f"[{lo:+.3f}, {hi:+.3f}]" if student and not math.isnan(lo) else ""
        row = (f"| {labels[n]} | {k} | {plus_minus(m, sd)} | "
               f"{'' if n == 'weak_teacher' else plus_minus(pm, ps, 1.0, 3)} | {ci} | {plus_minus(am, math.nan)} |")
        if with_stop:
            sm, ss, _ = mean_std(a for _, a in stop[n])
            row += (f" {'/'.join(str(e + 1) for e, _ in stop[n])}, {plus_minus(sm, ss)} |" if stop[n] else " |")
        lines.append(row)
    for t in _teachers(spec):
        ratios = ", ".join(f"seed {s} {error_ratio(acc[t][s], acc[ceiling][s]):.2f}"
                           + ("" if spec.holds(acc[t][s], acc[ceiling][s]) else f" (fails {spec.rule})")
                           for s in sorted(acc[t]))
        which = f" ({labels[t]})" if spec.second_teacher else ""
        lines += ["", f"error ratio r = err_teacher / err_ceiling{which}: {ratios}"]
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
