"""``w2s select-settings``: the seed-0 runs with which the rule of docs/demo.md picks the paper regime's setting.

Only teachers and ceilings are trained here, never a student, so nothing an objective does can
influence the choice (``pipeline.experiments.regimes``):

1. the ceiling (``ceiling_cnn.yaml``) on the first 500 images per class of half B for each epoch
   count of the ladder (20, 40, 80), until one fits its training images (last-epoch ``train_acc``
   >= 0.98); those are the paper regime's epochs;
2. every candidate teacher (``teacher_linear.yaml``'s recipe with the candidate's model and epochs)
   on the first 5,000 images of half A; the candidate whose error ratio against that ceiling lies
   in [1.10, 1.45] and is closest to 1.25 is the paper regime's teacher.

Finished runs are skipped when the command is run again; ``selection.json`` and ``selection.md``
record every run's accuracy and ratio and the choice.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config.schema import load_config
from pipeline.engine.checkpoint import write_json
from pipeline.engine.runtime import stderr_console
from pipeline.experiments.demo import CONFIG_DIR
from pipeline.experiments.regimes import (
    EPOCH_LADDER,
    IMAGES_PER_CLASS,
    Candidate,
    ceiling_fits,
    choose_teacher,
    error_ratio,
    paper_regime,
)
from pipeline.experiments.runs import load_run
from pipeline.train_student import train

NUM_CLASSES = 10
TRAIN_IMAGES = IMAGES_PER_CLASS * NUM_CLASSES
TEACHER_MODELS = (("fmnist_linear", ()), ("fmnist_mlp", ()), ("fmnist_cnn_w4", ("model.name=fmnist_cnn", "model.kwargs={width: 4}")),
                  ("fmnist_cnn_w8", ("model.name=fmnist_cnn", "model.kwargs={width: 8}")))
TEACHER_EPOCHS = (1, 3, 10, 30)


@dataclass(frozen=True)
class TeacherRun:
    """A candidate teacher: its name (model and epochs) and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]


def candidates() -> list[TeacherRun]:
    """Every candidate teacher in the rule's order: models weakest first, then epochs."""
    out = []
    for model, extra in TEACHER_MODELS:
        model_args = extra or (f"model.name={model}",)
        for epochs in TEACHER_EPOCHS:
            out.append(TeacherRun(f"{model}_e{epochs}", (*model_args, f"optim.epochs={epochs}")))
    return out


def _last_row(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _run(config: str, run_dir: Path, overrides: list[str], console: Console) -> None:
    if (run_dir / "result.json").exists():
        console.print(f"[dim]done already: {run_dir}[/dim]")
        return
    console.rule(str(run_dir.name))
    train(load_config(CONFIG_DIR / f"{config}.yaml", overrides + [f"run.output={run_dir}"]), role="teacher",
          resume=True, console=console)


def select_settings(output: str | Path, data_dir: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the selection under ``output``; returns what ``selection.json`` records."""
    console = console or stderr_console()
    out = Path(output)
    common = ["run.seed=0", f"data.limit={TRAIN_IMAGES}"] + ([f"data.data_dir={data_dir}"] if data_dir else [])
    ceilings: dict[int, dict[str, float]] = {}
    for epochs in EPOCH_LADDER:
        d = out / f"ceiling_e{epochs}"
        _run("ceiling_cnn", d, common + [f"optim.epochs={epochs}"], console)
        ceilings[epochs] = {"test_acc": load_run(d).test_acc, "train_acc": float(_last_row(d)["train_acc"])}
        if ceiling_fits(ceilings[epochs]["train_acc"]):
            break
    epochs = next((e for e in EPOCH_LADDER if e in ceilings and ceiling_fits(ceilings[e]["train_acc"])), EPOCH_LADDER[-1])
    ceiling_acc = ceilings[epochs]["test_acc"]
    teachers: dict[str, float] = {}
    for c in candidates():
        d = out / f"teacher_{c.name}"
        _run("teacher_linear", d, common + list(c.overrides), console)
        teachers[c.name] = load_run(d).test_acc
    chosen = choose_teacher([Candidate(n, a) for n, a in teachers.items()], ceiling_acc)
    record = {"train_images": TRAIN_IMAGES, "epochs": epochs, "ceiling_fits": ceiling_fits(ceilings[epochs]["train_acc"]),
              "ceilings": {str(e): v for e, v in ceilings.items()},
              "teachers": {n: {"test_acc": a, "ratio": error_ratio(a, ceiling_acc), "in_range": paper_regime(a, ceiling_acc)}
                           for n, a in teachers.items()},
              "chosen_teacher": chosen.name if chosen else None,
              "chosen_overrides": next((list(c.overrides) for c in candidates() if chosen and c.name == chosen.name), None)}
    write_json(out / "selection.json", record)
    (out / "selection.md").write_text(selection_table(record) + "\n")
    print(selection_table(record))
    return record


def selection_table(record: dict[str, Any]) -> str:
    """The selection as markdown: the ceiling ladder, then every candidate teacher with its ratio."""
    lines = ["| ceiling epochs | test acc (%) | train acc, last epoch (%) | fits (>= 98 %) |", "|---:|---:|---:|---|"]
    for e, v in record["ceilings"].items():
        lines.append(f"| {e} | {100 * v['test_acc']:.2f} | {100 * v['train_acc']:.2f} | "
                     f"{'yes' if ceiling_fits(v['train_acc']) else 'no'} |")
    lines += ["", f"paper regime epochs: {record['epochs']}"
              + ("" if record["ceiling_fits"] else " (no rung of the ladder fits: the largest, as the rule says)"),
              "", "| candidate teacher | test acc (%) | r = err_T / err_C | in [1.10, 1.45] |", "|---|---:|---:|---|"]
    for n, v in record["teachers"].items():
        mark = " **chosen**" if n == record["chosen_teacher"] else ""
        lines.append(f"| {n}{mark} | {100 * v['test_acc']:.2f} | {v['ratio']:.2f} | {'yes' if v['in_range'] else 'no'} |")
    if record["chosen_teacher"] is None:
        lines += ["", "no candidate qualifies: the paper regime is not reached with these candidates"]
    return "\n".join(lines)
