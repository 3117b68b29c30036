"""``w2s select-settings --scenario few_shot``: rule 4's choice of the few-shot weak teacher (docs/demo.md).

Seed 0 only, teachers and the ceiling only, never a student:

1. the ceiling: the CNN trained with ground truth on the base classes of half B
   (``fmnist_ceiling_cnn.yaml``), then Meta-Baseline on their episodes (``fmnist_meta_ceiling.yaml``),
   evaluated 4-way 1- and 5-shot on the novel classes (``fmnist_eval.yaml``);
2. every candidate teacher, ``fmnist_mlp`` with ``hidden`` 256, 64, 16 and 4 on today's recipe
   (``fmnist_teacher_mlp.yaml``), evaluated the same way on its own features.

The chosen teacher is the first candidate (the strongest) whose error is at least 1.10 times the
ceiling's and far from chance (1 / 4) for both shot counts. Finished runs are skipped when the
command runs again; ``selection.json`` and ``selection.md`` record every number and the choice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from pipeline.config.schema import load_config
from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.regimes import error_ratio, weaker_than_student
from pipeline.experiments.runs import load_run
from pipeline.train_student import train

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "few_shot"
HIDDEN = (256, 64, 16, 4)  # fmnist_mlp's hidden width, strongest first (256: the default before rule 4)
SHOTS = ("1", "5")
N_WAY = 4


def qualifies(teacher: dict[str, float], ceiling: dict[str, float]) -> bool:
    """Rule 4 for both shot counts: error at least 1.10 times the ceiling's, far from chance (1 / 4)."""
    return all(weaker_than_student(teacher[k], ceiling[k], N_WAY) for k in SHOTS)


def _step(run_dir: Path, console: Console, fn: Callable[[], Any]) -> None:
    if (run_dir / "result.json").exists():
        console.print(f"[dim]done already: {run_dir}[/dim]")
        return
    console.rule(run_dir.name)
    fn()


def _episodic(encoder: Path, out: Path, common: list[str], console: Console) -> dict[str, float]:
    """4-way 1- and 5-shot accuracy (fractions) of ``encoder`` on the novel classes (``fmnist_eval.yaml``)."""
    from pipeline.scenarios.few_shot import evaluate, load_few_shot_config

    _step(out, console, lambda: evaluate(load_few_shot_config(
        CONFIG_DIR / "fmnist_eval.yaml", common + [f"encoder.checkpoint={encoder}", f"run.output={out}"]), console=console))
    shots = json.loads((out / "result.json").read_text())["shots"]  # an evaluation, not a training run
    return {k: float(shots[k]["mean"]) for k in SHOTS}


def select_few_shot_teacher(output: str | Path, data_dir: str | None = None,
                            console: Console | None = None) -> dict[str, Any]:
    """Run the selection under ``output``; returns what ``selection.json`` records."""
    from pipeline.scenarios.few_shot import load_few_shot_config, meta_train

    console = console or stderr_console()
    out = Path(output)
    data = [f"data.data_dir={data_dir}"] if data_dir else []
    common = ["run.seed=0", *data]
    cnn, meta = out / "ceiling_cnn", out / "meta_ceiling"
    _step(cnn, console, lambda: train(load_config(CONFIG_DIR / "fmnist_ceiling_cnn.yaml", common + [f"run.output={cnn}"]),
                                      role="teacher", resume=True, console=console))
    _step(meta, console, lambda: meta_train(load_few_shot_config(
        CONFIG_DIR / "fmnist_meta_ceiling.yaml", common + [f"encoder.checkpoint={cnn}", f"run.output={meta}"]),
        resume=True, console=console))
    ceiling = _episodic(meta, out / "eval_meta_ceiling", data, console)
    teachers: dict[str, dict[str, Any]] = {}
    for hidden in HIDDEN:
        name = f"fmnist_mlp_h{hidden}"
        d = out / f"teacher_{name}"
        _step(d, console, lambda d=d, hidden=hidden: train(load_config(
            CONFIG_DIR / "fmnist_teacher_mlp.yaml", common + [f"model.kwargs={{hidden: {hidden}}}", f"run.output={d}"]),
            role="teacher", resume=True, console=console))
        acc = _episodic(d, out / f"eval_{name}", data, console)
        teachers[name] = {"hidden": hidden, "base_test_acc": load_run(d).test_acc, "episodic": acc,
                          "ratio": {k: error_ratio(acc[k], ceiling[k]) for k in SHOTS},
                          "qualifies": qualifies(acc, ceiling)}
    chosen = next((n for n, t in teachers.items() if t["qualifies"]), None)  # strongest first
    record = {"ceiling": ceiling, "teachers": teachers, "chosen_teacher": chosen,
              "chosen_hidden": teachers[chosen]["hidden"] if chosen else None}
    write_json(out / "selection.json", record)
    (out / "selection.md").write_text(selection_table(record) + "\n")
    print(selection_table(record))
    return record


def selection_table(record: dict[str, Any]) -> str:
    """The few-shot selection as markdown: the ceiling, then every candidate with its ratio per shot count."""
    c = record["ceiling"]
    lines = [f"ceiling (CNN on ground truth + Meta-Baseline), 4-way: 1-shot {100 * c['1']:.2f} %, "
             f"5-shot {100 * c['5']:.2f} %", "",
             "| candidate teacher | base-class test acc (%) | 1-shot (%) | 5-shot (%) | r 1-shot | r 5-shot | rule 4 |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for n, t in record["teachers"].items():
        mark = " **chosen**" if n == record["chosen_teacher"] else ""
        lines.append(f"| {n}{mark} | {100 * t['base_test_acc']:.2f} | {100 * t['episodic']['1']:.2f} | "
                     f"{100 * t['episodic']['5']:.2f} | {t['ratio']['1']:.2f} | {t['ratio']['5']:.2f} | "
                     f"{'holds' if t['qualifies'] else 'fails'} |")
    if record["chosen_teacher"] is None:
        lines += ["", "no candidate qualifies: the few-shot setting is not reached with these candidates"]
    return "\n".join(lines)
