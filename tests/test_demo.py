"""``w2s demo --quick`` end to end on 2,000 real Fashion-MNIST images, over two seeds."""
from __future__ import annotations

import json

from pipeline.demo import WEAK_ONLY, WITH_GT
from tests.cli_run import invoke


def test_quick_demo_over_two_seeds_reports_spread_and_pairs(fmnist_dir, tmp_path):
    res = invoke(["demo", "--quick", "--seeds", "0,1", "--data-dir", str(fmnist_dir), "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "quick"
    for seed in (0, 1):
        for run in ("weak_teacher", "strong_ceiling", *(s.name for s in WEAK_ONLY + WITH_GT)):
            result = json.loads((out / f"seed{seed}" / run / "result.json").read_text())
            assert result["epochs"] == (10 if run == "weak_teacher" else 1)  # quick: one epoch per strong model
        assert (out / f"seed{seed}" / "store" / "zarr.json").exists()
    ceilings = [json.loads((out / f"seed{s}" / "strong_ceiling" / "result.json").read_text())["test_acc"] for s in (0, 1)]
    assert ceilings[0] != ceilings[1]  # the seed is a real repeat (init, order, views)
    table = (out / "report" / "demo.md").read_text()
    assert "| AdaptConf student | 2 | " in table and " ± " in table
    assert "| AdaptConf student - KD student | 2 |" in table
    assert "| ground truth + AdaptConf student - strong ceiling (`fmnist_cnn`, half B, ground truth) | 2 |" in table
    assert (out / "report" / "paired.md").exists() and (out / "report" / "accuracy_pgr.png").exists()
    again = invoke(["demo", "--quick", "--seeds", "0", "--data-dir", str(fmnist_dir), "--output", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "done already" in again.output  # finished steps are skipped
    assert "one quick seed is a smoke test" in again.output
    assert "| AdaptConf student | 1 | " in again.output and "| AdaptConf student - KD student | 1 |" in again.output
    bad = invoke(["demo", "--seeds", "0,x", "--output", str(tmp_path)])
    assert bad.exit_code == 2 and "--seeds must be comma-separated integers" in bad.output
