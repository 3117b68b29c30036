"""``w2s select-settings --scenario regimes``: seed 0's teacher and ceiling of every embedded setting, checked.

The paper regime and few-shot have selections of their own (``settings_selection``,
``few_shot_selection``); the others keep their teacher and are checked here, before any of their
students runs: the main demo's teacher-only regime (rule 2), its pretrained-student regimes
(``finetune`` and ``probe``, rule 3) and the noisy-label demo per noise mode (rule 4). The runs go
where the demos put them (``<root>/demo/full/seed0``, ``<root>/noisy_demo/<mode>/seed0``), so the
demos reuse them; ``<root>/demo/rule_checks.json`` and ``.md`` record every accuracy, ratio and verdict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.demo import FINETUNE, NUM_CLASSES, PROBE, TEACHER_ONLY, run_teacher_and_ceiling
from pipeline.experiments.noisy_demo import NOISE_MODES, TEACHER, run_one
from pipeline.experiments.regimes import error_ratio, weaker_than_student
from pipeline.experiments.runs import load_run


def check_regimes(root: str | Path = "runs", data_dir: str | None = None,
                  console: Console | None = None) -> dict[str, Any]:
    """Train what is missing of each setting's seed-0 teacher and ceiling under ``root``; return the record."""
    console = console or stderr_console()
    root = Path(root)
    record: dict[str, Any] = {}
    for regime in (TEACHER_ONLY, FINETUNE, PROBE):
        seed0 = root / "demo" / regime.dir_name / "seed0"
        run_teacher_and_ceiling(regime, seed0, 0, False, data_dir, console)
        teacher, ceiling = load_run(seed0 / "weak_teacher").test_acc, load_run(seed0 / regime.ceiling_run).test_acc
        record[regime.name] = {"rule": regime.rule, "teacher_acc": teacher, "ceiling_acc": ceiling,
                               "ratio": error_ratio(teacher, ceiling), "holds": regime.holds(teacher, ceiling)}
    for noise in NOISE_MODES:
        seed0 = root / "noisy_demo" / noise / "seed0"
        for name in (TEACHER, "ceiling"):
            run_one(name, seed0, noise, 0, data_dir, console)
        teacher, ceiling = load_run(seed0 / TEACHER).test_acc, load_run(seed0 / "ceiling").test_acc
        record[f"noisy_{noise}"] = {"rule": "rule 4 (noisy labels)", "teacher_acc": teacher, "ceiling_acc": ceiling,
                                    "ratio": error_ratio(teacher, ceiling),
                                    "holds": weaker_than_student(teacher, ceiling, NUM_CLASSES)}
    out = root / "demo"
    write_json(out / "rule_checks.json", record)
    (out / "rule_checks.md").write_text(rule_table(record) + "\n")
    print(rule_table(record))
    return record


def rule_table(record: dict[str, Any]) -> str:
    """Each setting's seed-0 teacher, ceiling, error ratio and verdict as markdown."""
    lines = ["| setting | rule | teacher test acc (%) | ceiling test acc (%) | r = err_T / err_C | holds |",
             "|---|---|---:|---:|---:|---|"]
    for name, v in record.items():
        lines.append(f"| {name} | {v['rule']} | {100 * v['teacher_acc']:.2f} | {100 * v['ceiling_acc']:.2f} | "
                     f"{v['ratio']:.2f} | {'yes' if v['holds'] else 'no'} |")
    return "\n".join(lines)
