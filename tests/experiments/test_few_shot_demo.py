"""``w2s few-shot demo`` (rule 8 of docs/demo.md): the runs each seed makes, with which settings, and the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.engine.runtime import RunError, stderr_console
from pipeline.experiments.few_shot_demo import ENCODERS, PAIRS, record, report, run_seed


def _finish(cfg: Any, result: dict[str, Any]) -> None:
    out = Path(cfg.run.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (out / "result.json").write_text(json.dumps(result))


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every stage the demo calls, replaced by one that records its config and writes a finished run."""
    import pipeline.infer_teacher
    import pipeline.scenarios.few_shot
    import pipeline.train_student

    calls: list[tuple[str, Any]] = []

    def train(cfg: Any, role: str, resume: bool, console: Any) -> None:
        calls.append((f"train_{role}", cfg))
        _finish(cfg, {"test_acc": 0.8, "test_agreement": 0.9 if role == "student" else None})

    def meta_train(cfg: Any, resume: bool, console: Any) -> None:
        calls.append(("meta", cfg))
        _finish(cfg, {"train_agreement": 0.85 if cfg.meta.objective != "none" else None})

    def evaluate(cfg: Any, console: Any) -> None:
        calls.append(("eval", cfg))
        _finish(cfg, {"shots": {"1": {"mean": 0.6, "ci95": 0.01}, "5": {"mean": 0.7, "ci95": 0.01}}})

    monkeypatch.setattr(pipeline.train_student, "train", train)
    monkeypatch.setattr(pipeline.infer_teacher, "infer", lambda cfg, console: calls.append(("infer", cfg)))
    monkeypatch.setattr(pipeline.scenarios.few_shot, "meta_train", meta_train)
    monkeypatch.setattr(pipeline.scenarios.few_shot, "evaluate", evaluate)
    return calls


def test_each_seed_runs_rule_8s_stages_with_its_seed_and_skips_them_when_finished(tmp_path, fake_stages):
    root = tmp_path / "seed3"
    run_seed(root, 3, None, stderr_console())
    kinds = [k for k, _ in fake_stages]
    assert kinds == ["train_teacher", "train_teacher", "infer", "train_student", "meta", "meta", "meta", *["eval"] * 6]
    assert all(cfg.run.seed == 3 for _, cfg in fake_stages)
    teacher, ceiling, infer, student, meta_ceiling, meta_w2s, meta_gt = (c for _, c in fake_stages[:7])
    assert teacher.model.name == "fmnist_mlp" and teacher.model.kwargs == {"hidden": 4}  # rule 4's choice
    assert teacher.data.subset == "half_a" and ceiling.data.subset == student.data.subset == "half_b"
    assert infer.to_dict() == student.to_dict()  # the store is the student's
    assert student.teacher.checkpoint == str(root / "teacher") and student.teacher.store == str(root / "store")
    assert student.objective.name == "adaptconf" and student.objective.gt_weight == 0
    assert meta_ceiling.encoder.checkpoint == str(root / "ceiling_cnn") and meta_ceiling.meta.objective == "none"
    for meta, gt in ((meta_w2s, 0), (meta_gt, 1)):
        assert meta.encoder.checkpoint == str(root / "student_adaptconf")
        assert meta.teacher.checkpoint == str(root / "teacher")
        assert meta.meta.objective == "adaptconf" and meta.meta.gt_weight == gt
    evals = [c for k, c in fake_stages if k == "eval"]
    assert [c.encoder.checkpoint for c in evals] == [str(root / name) for name, _ in ENCODERS]
    assert all(c.episodes.seed == 3 and c.data.classes == [6, 7, 8, 9] for c in evals)  # same episodes per seed

    fake_stages.clear()
    run_seed(root, 3, None, stderr_console())  # everything finished with the same settings: nothing runs
    assert fake_stages == []
    with pytest.raises(RunError, match=r"seed3/teacher is finished with run.seed = 3, but the demo now sets 4"):
        run_seed(root, 4, None, stderr_console())  # another seed's settings in the same folder: refused


ACC = {  # encoder: per seed (1-shot, 5-shot)
    "teacher": ((0.60, 0.71), (0.61, 0.72), (0.59, 0.70)),
    "ceiling_cnn": ((0.63, 0.77), (0.64, 0.78), (0.62, 0.76)),
    "meta_ceiling": ((0.65, 0.78), (0.66, 0.79), (0.64, 0.77)),
    "student_adaptconf": ((0.62, 0.74), (0.63, 0.76), (0.62, 0.74)),
    "meta_adaptconf": ((0.61, 0.73), (0.62, 0.73), (0.60, 0.72)),
    "meta_adaptconf_gt": ((0.64, 0.77), (0.65, 0.78), (0.63, 0.76)),
}


def _record(tmp_path: Path, acc: dict = ACC) -> dict:
    for s in range(3):
        for name, per_seed in acc.items():
            one, five = per_seed[s]
            (tmp_path / f"seed{s}" / f"eval_{name}").mkdir(parents=True)
            (tmp_path / f"seed{s}" / f"eval_{name}" / "result.json").write_text(json.dumps(
                {"shots": {"1": {"mean": one}, "5": {"mean": five}}}))
            run = ({"test_acc": 0.9, "test_agreement": 0.8 if name == "student_adaptconf" else None}
                   if not name.startswith("meta") else {"train_agreement": 0.7 if name != "meta_ceiling" else None})
            (tmp_path / f"seed{s}" / name).mkdir()
            (tmp_path / f"seed{s}" / name / "result.json").write_text(json.dumps(run))
    return record(tmp_path, (0, 1, 2))


def test_report_gives_accuracy_pgr_ratios_and_one_holm_family(tmp_path):
    text = report(_record(tmp_path))
    # student_adaptconf 1-shot: 62, 63, 62; PGR per seed (62-60)/(65-60), (63-61)/(66-61), (62-59)/(64-59) = .4, .4, .6
    assert ("| `fmnist_cnn`, AdaptConf from the teacher alone (classifier stage) | 3 | 62.33 ± 0.58 | 74.67 ± 1.15 | "
            "0.467 ± 0.115 |") in text
    teacher = "| weak teacher: `fmnist_mlp` hidden 4, ground truth (half A) | 3 | "
    assert teacher + "60.00 ± 1.00 | 71.00 ± 1.00 |  |  | 90.00 |  |" in text
    assert "| + meta stage, AdaptConf from the teacher alone (`gt_weight` 0) | 3 | " in text and " | 70.00 |" in text
    # r per seed, 1-shot: 40/35, 39/34, 41/36; 5-shot: 29/22, 28/21, 30/23
    assert "- seed 0: 1-shot 1.14, 5-shot 1.32 (holds)" in text
    assert f"99.50% CI (Bonferroni, {2 * len(PAIRS)} comparisons)" in text
    line = next(x for x in text.splitlines() if x.startswith("| student_adaptconf - teacher | 1 |"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[3] == "3" and float(cells[4]) == pytest.approx(2.33, abs=0.01)
    rows = [x.split("|")[1:3] for x in text.splitlines() if x.startswith("| ") and " - " in x.split("|")[1]]
    assert [(a.strip(), k.strip()) for a, k in rows[1:]] == [(f"{a} - {b}", k) for a, b in PAIRS for k in "15"]


def test_report_says_when_a_seeds_teacher_is_not_weaker_than_its_ceiling(tmp_path):
    acc = {**ACC, "teacher": ((0.60, 0.71), (0.66, 0.79), (0.59, 0.70))}  # seed 1: level with the ceiling
    text = report(_record(tmp_path, acc))
    assert "- seed 1: 1-shot 1.00, 5-shot 1.00 (fails)" in text
