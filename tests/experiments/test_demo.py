"""``w2s demo --quick`` end to end on 2,000 real Fashion-MNIST images, over two seeds."""
from __future__ import annotations

import json

from pipeline.experiments.demo import QUICK_EPOCHS, WEAK_ONLY
from tests.cli_run import invoke


def test_quick_demo_over_two_seeds_reports_spread_and_pairs(fmnist_dir, tmp_path):
    res = invoke(["demo", "--quick", "--seeds", "0,1", "--data-dir", str(fmnist_dir), "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "quick"
    for seed in (0, 1):
        for run in ("weak_teacher", "strong_ceiling", *(s.name for s in WEAK_ONLY)):
            result = json.loads((out / f"seed{seed}" / run / "result.json").read_text())
            assert result["epochs"] == (10 if run == "weak_teacher" else QUICK_EPOCHS)  # the full demo's CNNs: 10
        assert not (out / f"seed{seed}" / "student_gt_adaptconf").exists()  # the gt setting is the full demo's
        assert (out / f"seed{seed}" / "store" / "zarr.json").exists()
    ceilings = [json.loads((out / f"seed{s}" / "strong_ceiling" / "result.json").read_text())["test_acc"] for s in (0, 1)]
    assert ceilings[0] != ceilings[1]  # the seed is a real repeat (init, order, views)
    table = (out / "report" / "demo.md").read_text()
    assert "| AdaptConf student | 2 | " in table and " ± " in table
    assert "| AdaptConf student - KD student | 2 |" in table
    assert (out / "report" / "paired.md").exists() and (out / "report" / "accuracy_pgr.png").exists()
    again = invoke(["demo", "--quick", "--seeds", "0", "--data-dir", str(fmnist_dir), "--output", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "done already" in again.output  # finished steps are skipped
    assert "one quick seed is a smoke test" in again.output
    assert "| AdaptConf student | 1 | " in again.output and "| AdaptConf student - KD student | 1 |" in again.output
    bad = invoke(["demo", "--seeds", "0,x", "--output", str(tmp_path)])
    assert bad.exit_code == 2 and "--seeds must be comma-separated integers" in bad.output


def test_full_demo_table_pairs_the_ground_truth_student_with_the_ceiling(tmp_path):
    """The full demo's table on written results: 3 seeds, PGR per seed, paired rows with hand-checked values."""
    from pipeline.experiments.demo import WITH_GT, demo_table

    acc = {"weak_teacher": [0.75, 0.76, 0.74], "strong_ceiling": [0.89, 0.90, 0.88],
           "student_kd": [0.76, 0.77, 0.75], "student_augconf": [0.76, 0.76, 0.76],
           "student_adaptconf": [0.77, 0.78, 0.76], "student_gt_adaptconf": [0.90, 0.90, 0.89]}
    for name, values in acc.items():
        for seed, a in enumerate(values):
            d = tmp_path / f"seed{seed}" / name
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"test_acc": a, "test_agreement": 0.8}))
    table = demo_table([tmp_path / f"seed{s}" for s in range(3)], WEAK_ONLY + WITH_GT)
    # PGR per seed of KD: (0.76-0.75)/(0.89-0.75), (0.77-0.76)/(0.90-0.76), (0.75-0.74)/(0.88-0.74) = 1/14 each
    assert "| KD student | 3 | 76.00 ± 1.00 | 0.071 ± 0.000 | 80.00 |" in table
    # gt + AdaptConf - ceiling: +1, 0, +1 points: mean +0.67, s = 0.577, CI half-width 4.303 * 0.577 / sqrt 3 = 1.43
    assert "| ground truth + AdaptConf student - strong ceiling (`fmnist_cnn`, half B, ground truth) | 3 | +0.67 | " \
           "[-0.77, +2.10] |" in table
