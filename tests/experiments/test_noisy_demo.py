"""``w2s noisy-demo``'s report and figure, from run directories laid out as the demo writes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.experiments.noisy_demo import METHODS, NOISE_MODES, figure, report

ACC = {"ce": (0.70, 0.72, 0.71), "selcl_plus": (0.80, 0.81, 0.83), "selcl_plus_adaptconf": (0.81, 0.83, 0.83)}


def _runs(out: Path) -> None:
    for noise in NOISE_MODES:
        for s in range(3):
            root = out / noise / f"seed{s}"
            for m, _ in METHODS:
                (root / m).mkdir(parents=True)
                (root / m / "result.json").write_text(json.dumps({"test_acc": ACC[m][s]}))
            for model in ("selcl_cnn", "selcl_mlp"):
                (root / model).mkdir()
                (root / model / "result.json").write_text(json.dumps(
                    {"selected": 1500 + 100 * s, "train_samples": 3000, "selection_precision": 0.9,
                     "selection_recall": 0.7, "noise_rate": 0.36}))
                rows = [{"epoch": e, "selection_precision": 0.8 + 0.05 * e, "selection_recall": 0.5 + 0.1 * e}
                        for e in range(3)]
                (root / model / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_gives_mean_std_pairs_and_selection(tmp_path: Path) -> None:
    _runs(tmp_path)
    text = report(tmp_path, (0, 1, 2))
    assert "| symmetric | cross-entropy on the noisy labels | 3 | 71.00 ± 1.00 |" in text
    assert "| asym_next | Sel-CL -> Sel-CL+ | 3 | 81.33 ± 1.53 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| symmetric | selcl_plus - ce |"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[3] == "3" and float(cells[4]) == pytest.approx(10.33, abs=0.01)
    assert "| symmetric | selcl_cnn | 53.3 ± 3.3 | 90.0 ± 0.0 | 70.0 ± 0.0 | 36.0 ± 0.0 |" in text


def test_figure_is_written(tmp_path: Path) -> None:
    _runs(tmp_path)
    figure(tmp_path, (0, 1, 2), tmp_path / "pr.png")
    assert (tmp_path / "pr.png").stat().st_size > 10_000
