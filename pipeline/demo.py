"""``w2s demo``: the whole weak-to-strong experiment on Fashion-MNIST, from the configs in configs/fmnist.

Half A of the training set trains the weak teacher; its views of half B are cached once; the
strong ceiling learns half B's ground truth; KD, AugConf and AdaptConf students learn half B from
the teacher alone. Finished steps are skipped when the demo is run again.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from pipeline.config import Config, load_config
from pipeline.infer_teacher import infer
from pipeline.report import report
from pipeline.train_student import train

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "fmnist"
STUDENTS = ("kd", "augconf", "adaptconf")


def _config(name: str, overrides: list[str]) -> Config:
    return load_config(CONFIG_DIR / f"{name}.yaml", overrides)


def run_demo(output: str | Path, quick: bool = False, data_dir: str | None = None,
             console: Console | None = None) -> str:
    """Run every step under ``output`` and return the markdown table (also in ``report/report.md``)."""
    console = console or Console(stderr=True)
    out = Path(output) / ("quick" if quick else "full")
    common = [f"data.data_dir={data_dir}"] if data_dir else []
    if quick:
        common += ["data.limit=8000", "data.test_limit=5000"]
    teacher_dir, store_dir = out / "weak_teacher", out / "store"
    start = time.perf_counter()

    def step(title: str, run_dir: Path, fn) -> None:  # type: ignore[no-untyped-def]
        if (run_dir / "result.json").exists():
            console.print(f"[dim]{title}: done already ({run_dir})[/dim]")
            return
        console.rule(title)
        fn()

    step("weak teacher on half A", teacher_dir, lambda: train(
        _config("teacher_linear", common + [f"run.output={teacher_dir}"]), role="teacher", resume=True, console=console))
    console.rule("infer-teacher on half B")
    teacher_args = [f"teacher.checkpoint={teacher_dir}", f"teacher.store={store_dir}"]
    infer(_config("infer_teacher", common + teacher_args), console=console)
    ceiling_dir = out / "strong_ceiling"
    step("strong ceiling on half B (ground truth)", ceiling_dir, lambda: train(
        _config("ceiling_cnn", common + [f"run.output={ceiling_dir}"]), role="teacher",
        resume=True, console=console))
    student_dirs = []
    for ob in STUDENTS:
        d = out / f"student_{ob}"
        student_dirs.append(d)
        step(f"{ob} student on half B (weak labels only)", d, lambda ob=ob, d=d: train(
            _config(f"student_{ob}", common + teacher_args + [f"run.output={d}"]),
            role="student", resume=True, console=console))
    table, _ = report(student_dirs, out / "report", weak_paths=[teacher_dir], ceiling_paths=[ceiling_dir])
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; table {out / 'report' / 'report.md'}, "
                  f"figures {out / 'report'}/*.png")
    print(table)
    return table
