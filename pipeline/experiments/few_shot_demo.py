"""``w2s few-shot demo``: the few-shot default on Fashion-MNIST over seeds (rule 8 of docs/demo.md).

Per seed, under ``<output>/seed<N>/``, every run with ``run.seed`` N (``configs/few_shot/fmnist_*.yaml``):
the weak teacher (``fmnist_mlp``, hidden 4 by rule 4), the CNN on ground truth (classifier stage), the
teacher's store of half B's base classes and the CNN that learns from it alone with AdaptConf, then
Meta-Baseline from the ground-truth CNN (the ceiling of rule 4) and the meta stage from the AdaptConf CNN,
from the teacher alone (``gt_weight`` 0) and with labels (``gt_weight`` 1, the paper's meta loss). Every
encoder is scored 4-way 1- and 5-shot on the novel classes, on the same episodes within a seed (seeded N).
The report gives each encoder's accuracy per shot count (mean +- std), PGR, agreement with the teacher,
each seed's error ratio against rule 4, and the paired differences as one Holm-Bonferroni family.
Finished runs made with the same settings are skipped; finished runs made with other settings are refused.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from pipeline.config.schema import load_config
from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.regimes import ALPHA, SEEDS, error_ratio
from pipeline.experiments.report import pgr
from pipeline.experiments.few_shot_selection import CONFIG_DIR, N_WAY, SHOTS, qualifies
from pipeline.experiments.runs import finished_with
from pipeline.experiments.stats import holm, mean_std, paired_difference

ENCODERS = (
    ("teacher", "weak teacher: `fmnist_mlp` hidden 4, ground truth (half A)"),
    ("ceiling_cnn", "`fmnist_cnn`, ground truth (classifier stage)"),
    ("meta_ceiling", "**ceiling**: the ground-truth CNN + Meta-Baseline"),
    ("student_adaptconf", "`fmnist_cnn`, AdaptConf from the teacher alone (classifier stage)"),
    ("meta_adaptconf", "+ meta stage, AdaptConf from the teacher alone (`gt_weight` 0)"),
    ("meta_adaptconf_gt", "+ meta stage, labels + AdaptConf (`gt_weight` 1, the paper's meta loss)"),
)
# rule 8: the family, each for 1- and 5-shot (10 comparisons, Holm)
PAIRS = (("student_adaptconf", "teacher"), ("meta_adaptconf", "teacher"), ("student_adaptconf", "ceiling_cnn"),
         ("meta_adaptconf_gt", "meta_ceiling"), ("meta_adaptconf", "student_adaptconf"))
RULE = "rule 4 (few-shot)"


def _run(run_dir: Path, config: Any, title: str, console: Console, fn: Callable[[], Any]) -> None:
    if finished_with(run_dir, config.to_dict()):
        console.print(f"[dim]{title}: done already ({run_dir})[/dim]")
        return
    console.rule(title)
    fn()


def run_seed(root: Path, seed: int, data_dir: str | None, console: Console) -> None:
    """Every run of one seed (rule 8), each skipped when finished with the same settings."""
    from pipeline.infer_teacher import infer
    from pipeline.scenarios.few_shot import evaluate, load_few_shot_config, meta_train
    from pipeline.train_student import train

    data = [f"data.data_dir={data_dir}"] if data_dir else []
    common = [f"run.seed={seed}", *data]

    def classifier(name: str, config: str, extra: list[str], role: str) -> None:
        cfg = load_config(CONFIG_DIR / f"{config}.yaml", common + extra + [f"run.output={root / name}"])

        def go() -> None:
            if role == "student":
                infer(cfg, console=console)  # leaves a complete store as it is
            train(cfg, role=role, resume=True, console=console)
        _run(root / name, cfg, f"few-shot seed {seed}: {name}", console, go)

    def meta(name: str, encoder: str, extra: list[str]) -> None:
        config = "fmnist_meta_ceiling" if name == "meta_ceiling" else "fmnist_meta_adaptconf"
        cfg = load_few_shot_config(CONFIG_DIR / f"{config}.yaml", common + extra + [
            f"encoder.checkpoint={root / encoder}", f"run.output={root / name}"])
        _run(root / name, cfg, f"few-shot seed {seed}: {name}", console,
             lambda: meta_train(cfg, resume=True, console=console))

    classifier("teacher", "fmnist_teacher_mlp", [], "teacher")
    classifier("ceiling_cnn", "fmnist_ceiling_cnn", [], "teacher")
    classifier("student_adaptconf", "fmnist_student_adaptconf",
               [f"teacher.checkpoint={root / 'teacher'}", f"teacher.store={root / 'store'}"], "student")
    meta("meta_ceiling", "ceiling_cnn", [])
    meta("meta_adaptconf", "student_adaptconf", [f"teacher.checkpoint={root / 'teacher'}"])
    meta("meta_adaptconf_gt", "student_adaptconf", [f"teacher.checkpoint={root / 'teacher'}", "meta.gt_weight=1"])
    for name, _ in ENCODERS:
        out = root / f"eval_{name}"
        cfg = load_few_shot_config(CONFIG_DIR / "fmnist_eval.yaml", common + [
            f"episodes.seed={seed}", f"encoder.checkpoint={root / name}", f"run.output={out}"])
        _run(out, cfg, f"few-shot seed {seed}: 4-way episodes of {name}", console,
             lambda cfg=cfg: evaluate(cfg, console=console))


def record(out: Path, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per seed and encoder: episodic accuracy per shot count (fractions), base-class test accuracy and
    agreement with the teacher where the run has them."""
    def one(root: Path, name: str) -> dict[str, Any]:
        shots = json.loads((root / f"eval_{name}" / "result.json").read_text())["shots"]
        run = json.loads((root / name / "result.json").read_text())
        agree = run.get("test_agreement") if "test_agreement" in run else run.get("train_agreement")
        return {"episodic": {k: float(shots[k]["mean"]) for k in SHOTS}, "base_test_acc": run.get("test_acc"),
                "agreement": agree}
    return {"rule": RULE, "ceiling": "meta_ceiling", "teacher": "teacher",
            "seeds": {str(s): {name: one(out / f"seed{s}", name) for name, _ in ENCODERS} for s in seeds}}


def report(rec: dict[str, Any]) -> str:
    """Markdown: each encoder's 4-way accuracy per shot count with PGR, each seed's r against rule 4, and the
    paired differences (Holm over all of them, Bonferroni intervals)."""
    seeds = sorted(int(s) for s in rec["seeds"])
    acc = {(name, k): {s: 100 * rec["seeds"][str(s)][name]["episodic"][k] for s in seeds}
           for name, _ in ENCODERS for k in SHOTS}
    lines = ["| encoder | seeds | 1-shot (%) | 5-shot (%) | PGR 1-shot | PGR 5-shot | base-class test acc (%) | "
             "agreement with teacher (%) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in ENCODERS:
        cells = []
        for k in SHOTS:
            m, sd, n = mean_std(acc[name, k].values())
            cells.append(f"{m:.2f}" + (f" ± {sd:.2f}" if n > 1 else ""))
        for k in SHOTS:
            if name == "teacher":
                cells.append("")
                continue
            m, sd, n = mean_std(pgr(acc[name, k][s], acc["teacher", k][s], acc["meta_ceiling", k][s]) for s in seeds)
            cells.append(f"{m:.3f}" + (f" ± {sd:.3f}" if n > 1 else ""))
        for key in ("base_test_acc", "agreement"):
            m, sd, n = mean_std(rec["seeds"][str(s)][name][key] for s in seeds)
            cells.append(f"{100 * m:.2f}" if n else "")
        lines.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    ratios = []
    for s in seeds:
        runs = rec["seeds"][str(s)]
        teacher, ceiling = runs["teacher"]["episodic"], runs["meta_ceiling"]["episodic"]
        ratios.append(f"seed {s}: " + ", ".join(f"{k}-shot {error_ratio(teacher[k], ceiling[k]):.2f}" for k in SHOTS)
                      + f" ({'holds' if qualifies(teacher, ceiling) else 'fails'})")
    family = [(a, b, k) for a, b in PAIRS for k in SHOTS]
    m = len(family)
    level = 1 - ALPHA / m
    diffs = [paired_difference(acc[a, k], acc[b, k]) for a, b, k in family]
    wide = [paired_difference(acc[a, k], acc[b, k], level) for a, b, k in family]
    pairs = [f"| a - b, paired over seeds | shots | seeds | difference (points) | {100 * level:.2f}% CI (Bonferroni, "
             f"{m} comparisons) | p (paired t) | p (Holm) | Holm, family-wise {ALPHA} |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for (a, b, k), d, w, ph in zip(family, diffs, wide, holm([d.p_value for d in diffs])):
        if d.n < 2:
            pairs.append(f"| {a} - {b} | {k} | {d.n} | {d.mean:+.2f} | | | | one seed: no test |")
            continue
        pairs.append(f"| {a} - {b} | {k} | {d.n} | {d.mean:+.2f} | [{w.ci_low:+.2f}, {w.ci_high:+.2f}] | "
                     f"{d.p_value:.3f} | {ph:.3f} | {'differs' if ph < ALPHA else 'not significant'} |")
    return "\n".join([f"4-way episodes of the novel classes 6-9 (2,000 per shot count, seeded by the run's seed); "
                      f"PGR against the teacher and the ceiling of the same seed:", "", *lines, "",
                      f"Error ratio r = err_teacher / err_ceiling per seed ({RULE}: r >= 1.10 and far from chance "
                      f"for both shot counts, chance = 1 / {N_WAY}):", "", *(f"- {r}" for r in ratios), "", *pairs])


def run_few_shot_demo(output: str | Path = "runs/few_shot_demo", seeds: tuple[int, ...] = SEEDS,
                      data_dir: str | None = None, console: Console | None = None) -> str:
    """Every run of every seed under ``output``; writes ``record.json`` and ``report.md`` and returns the report."""
    console = console or stderr_console()
    out = Path(output)
    for seed in seeds:
        start = time.perf_counter()
        run_seed(out / f"seed{seed}", seed, data_dir, console)
        console.print(f"few-shot seed {seed}: {time.perf_counter() - start:.0f} s")
    rec = record(out, seeds)
    write_json(out / "record.json", rec)
    text = report(rec)
    (out / "report.md").write_text(text + "\n")
    if len(seeds) == 1:
        text += "\n\none seed is a smoke test, not a comparison: the table of docs/demo.md comes from 5 seeds (rule 5)"
    return text
