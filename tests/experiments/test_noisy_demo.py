"""``w2s noisy-demo``'s report and figure, from run directories laid out as the demo writes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.experiments.noisy_demo import NOISE_MODES, TEACHER as TEACHER_RUN, TEACHER_LABEL, figure, report

ACC = {"ce": (0.70, 0.72, 0.71), "selcl_plus": (0.80, 0.81, 0.83), "selcl_plus_adaptconf": (0.81, 0.83, 0.83),
       "ceiling": (0.86, 0.85, 0.87)}
TEACHER = (0.72, 0.73, 0.71)


def _runs(out: Path) -> None:
    for noise in NOISE_MODES:
        for s in range(3):
            root = out / noise / f"seed{s}"
            for m in ACC:
                (root / m).mkdir(parents=True)
                agree = {"test_agreement": 0.9} if m == "selcl_plus_adaptconf" else {}
                (root / m / "result.json").write_text(json.dumps({"test_acc": ACC[m][s], **agree}))
                rows = [{"epoch": e, "test_acc": ACC[m][s] - 0.1 / (e + 1)} for e in range(4)]
                (root / m / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (root / TEACHER_RUN).mkdir()
            (root / TEACHER_RUN / "result.json").write_text(json.dumps({"test_acc": TEACHER[s]}))
            (root / "selcl_cnn").mkdir()
            (root / "selcl_cnn" / "result.json").write_text(json.dumps(
                {"test_acc": 0.5, "selected": 1500 + 100 * s, "train_samples": 3000, "selection_precision": 0.9,
                 "selection_recall": 0.7, "noise_rate": 0.36}))
            rows = [{"epoch": e, "selection_precision": 0.8 + 0.05 * e, "selection_recall": 0.5 + 0.1 * e,
                     "test_acc": 0.5 + 0.1 * e} for e in range(3)]
            (root / "selcl_cnn" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_gives_mean_std_pairs_and_selection(tmp_path: Path) -> None:
    _runs(tmp_path)
    text = report(tmp_path, (0, 1, 2))
    assert "| symmetric | cross-entropy on the noisy labels | 3 | 71.00 ± 1.00 |" in text
    assert "| asym_next | Sel-CL -> Sel-CL+ | 3 | 81.33 ± 1.53 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| symmetric | selcl_plus - ce |"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[3] == "3" and float(cells[4]) == pytest.approx(10.33, abs=0.01)
    assert "| symmetric | selcl_cnn | 53.3 ± 3.3 | 90.0 ± 0.0 | 70.0 ± 0.0 | 36.0 ± 0.0 |" in text
    assert f"| symmetric | {TEACHER_LABEL} | 3 | 72.00 ± 1.00 | | |" in text
    # PGR of Sel-CL+ with AdaptConf per seed: (81-72)/(86-72), (83-73)/(85-73), (83-71)/(87-71) = 0.643, 0.833, 0.75
    assert "| symmetric | Sel-CL+ with AdaptConf from the weak teacher | 3 | 82.33 ± 1.15 | 0.742 ± 0.095 | 90.00 |" in text
    # r per seed: 28/14, 27/15, 29/13
    assert "- symmetric: seed 0 2.00, seed 1 1.80, seed 2 2.23 (rule 4, r >= 1.10 and far from chance: holds on every seed)" \
        in text
    assert "98.33% CI (Bonferroni, 3 comparisons)" in text and line.endswith(" |")


def test_report_says_when_the_teacher_is_not_weaker_than_the_ceiling(tmp_path: Path) -> None:
    _runs(tmp_path)
    for noise in NOISE_MODES:  # seed 1's teacher as good as its ceiling
        (tmp_path / noise / "seed1" / TEACHER_RUN / "result.json").write_text(json.dumps({"test_acc": 0.85}))
    assert "seed 1 1.00, seed 2 2.23 (rule 4, r >= 1.10 and far from chance: fails)" in report(tmp_path, (0, 1, 2))


def test_figures_are_written(tmp_path: Path) -> None:
    from pipeline.experiments.noisy_demo import curves

    _runs(tmp_path)
    figure(tmp_path, (0, 1, 2), tmp_path / "pr.png")
    curves(tmp_path, (0, 1, 2), tmp_path / "curves.png")
    assert (tmp_path / "pr.png").stat().st_size > 10_000 and (tmp_path / "curves.png").stat().st_size > 10_000


def test_the_ceiling_is_the_ce_run_on_the_clean_labels(tmp_path: Path) -> None:
    from dataclasses import asdict

    from pipeline.experiments.noisy_demo import _config

    ceiling = asdict(_config("ceiling", tmp_path, "asym_next", 3, None))
    ce = asdict(_config("ce", tmp_path, "asym_next", 3, None))
    assert ceiling["data"]["noise_mode"] == "none" and ceiling["data"]["noise_rate"] == 0
    assert ce["data"]["noise_mode"] == "asym_next" and ce["data"]["noise_rate"] == 0.4
    for cfg in (ceiling, ce):
        del cfg["data"]["noise_mode"], cfg["data"]["noise_rate"], cfg["run"]["output"]
    assert ceiling == ce  # same images, CNN, recipe and seed


def test_record_holds_every_run_of_every_mode_and_seed(tmp_path: Path) -> None:
    from pipeline.experiments.noisy_demo import RUNS, record

    _runs(tmp_path)
    (tmp_path / "symmetric" / "seed0" / "ce").mkdir(exist_ok=True)
    rec = record(tmp_path, (0, 1, 2))
    assert rec["teacher"] == TEACHER_RUN and rec["ceiling"] == "ceiling" and set(rec["modes"]) == set(NOISE_MODES)
    assert set(rec["modes"]["asym_next"]["2"]) == set(RUNS)
    assert rec["modes"]["asym_next"]["1"][TEACHER_RUN]["test_acc"] == TEACHER[1]
    assert rec["modes"]["symmetric"]["2"]["selcl_plus_adaptconf"] == {"test_acc": 0.83, "test_agreement": 0.9}
