"""``w2s select-settings --scenario regimes`` on finished seed-0 runs: every setting's ratio and verdict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.experiments.demo import FINETUNE, PROBE, TEACHER_ONLY
from pipeline.experiments.noisy_demo import TEACHER, _config
from pipeline.experiments.rule_checks import check_regimes
from tests.helpers import finished_demo_run


def _result(d: Path, acc: float) -> None:
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"test_acc": acc}))


def test_finished_runs_are_checked_without_training(tmp_path, capsys):
    seed0 = tmp_path / "demo" / "full" / "seed0"
    for spec, name, acc in ((TEACHER_ONLY, "weak_teacher", 0.758), (TEACHER_ONLY, "strong_ceiling", 0.894),
                            (FINETUNE, "finetune_ceiling", 0.90), (PROBE, "probe_ceiling", 0.764)):
        finished_demo_run(spec, seed0, name, acc)
    for noise, teacher in (("symmetric", 0.707), ("asym_next", 0.85)):
        root = tmp_path / "noisy_demo" / noise / "seed0"
        for name, acc in ((TEACHER, teacher), ("ceiling", 0.86)):  # finished with the settings the demo would use
            _result(root / name, acc)
            (root / name / "config.yaml").write_text(yaml.safe_dump(_config(name, root, noise, 0, None).to_dict()))
    record = check_regimes(tmp_path)
    assert record["teacher_only"]["ratio"] == pytest.approx(0.242 / 0.106) and record["teacher_only"]["holds"]
    assert record["finetune"]["holds"] and not record["probe"]["holds"]  # probe: r = 0.242 / 0.236 = 1.03 < 1.5
    assert record["noisy_symmetric"]["holds"]  # 0.293 / 0.14 = 2.09 >= 1.10, 70.7 >= 10 + 0.5 x 76
    assert not record["noisy_asym_next"]["holds"]  # 0.15 / 0.14 = 1.07 < 1.10
    assert json.loads((tmp_path / "demo" / "rule_checks.json").read_text()) == record
    table = (tmp_path / "demo" / "rule_checks.md").read_text()
    assert "| probe | rule 3 (pretrained student) | 75.80 | 76.40 | 1.03 | no |" in table
    assert table.strip() in capsys.readouterr().out
