"""``w2s demo --quick`` end to end on 2,000 real Fashion-MNIST images, over two seeds."""
from __future__ import annotations

import json

from pipeline.experiments.demo import QUICK_EPOCHS, WEAK_ONLY
from tests.cli_run import invoke
from tests.helpers import finished_demo_run


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


def _write_results(root, acc, extra=None):
    for name, values in acc.items():
        for seed, a in enumerate(values):
            d = root / f"seed{seed}" / name
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"test_acc": a, "test_agreement": 0.8, **(extra or {})}))


def test_full_demo_table_pairs_the_ground_truth_student_with_the_ceiling(tmp_path):
    """The teacher-only table on written results: 3 seeds, PGR per seed, paired rows with hand-checked values,
    Bonferroni intervals and Holm-adjusted p-values over the table's 4 comparisons."""
    from pipeline.experiments.demo import TEACHER_ONLY, demo_table

    _write_results(tmp_path, {"weak_teacher": [0.75, 0.76, 0.74], "strong_ceiling": [0.89, 0.90, 0.88],
                              "student_kd": [0.76, 0.77, 0.75], "student_augconf": [0.76, 0.76, 0.76],
                              "student_adaptconf": [0.77, 0.78, 0.76], "student_gt_adaptconf": [0.90, 0.90, 0.89]})
    table = demo_table([tmp_path / f"seed{s}" for s in range(3)], TEACHER_ONLY)
    # PGR per seed of KD: (0.76-0.75)/(0.89-0.75), (0.77-0.76)/(0.90-0.76), (0.75-0.74)/(0.88-0.74) = 1/14 each
    assert "| KD student | 3 | 76.00 ± 1.00 | 0.071 ± 0.000 | [+0.071, +0.071] | 80.00 |" in table
    # AugConf's PGR per seed: 1/14, 0, 2/14: mean 0.071, s 0.071, t(0.975, 2) = 4.303 -> half-width 0.177
    assert "| AugConf student | 3 | 76.00 ± 0.00 | 0.071 ± 0.071 | [-0.106, +0.249] | 80.00 |" in table
    assert "error ratio r = err_teacher / err_ceiling: seed 0 2.27, seed 1 2.40, seed 2 2.17" in table
    assert "98.75% CI (Bonferroni, 4 comparisons)" in table
    # gt + AdaptConf - ceiling: +1, 0, +1 points: mean +0.67, s = 0.577, t(0.99375, 2) = 8.860 -> half-width 2.95;
    # paired t p = 0.184. Holm over the four p-values (about 0, 0.225, 1 and 0.184): 0.184 is the second smallest,
    # x 3 = 0.551, above the running maximum of the first
    assert "| ground truth + AdaptConf student - strong ceiling (`fmnist_cnn`, half B, ground truth) | 3 | +0.67 | " \
           "[-2.29, +3.62] | 0.184 | 0.551 | not significant |" in table


def test_paper_regime_table_reports_the_stopping_rule_and_every_pair_against_the_ceiling(tmp_path):
    from pipeline.experiments.demo import PAPER, demo_table

    _write_results(tmp_path, {"weak_teacher": [0.845, 0.85], "strong_ceiling": [0.878, 0.88]})
    _write_results(tmp_path, {"student_gt_kd": [0.871, 0.873], "student_gt_augconf": [0.875, 0.874],
                              "student_gt_adaptconf": [0.878, 0.879]},
                   extra={"best_epoch": 49, "test_acc_at_best": 0.86, "val_labels": "teacher"})
    table = demo_table([tmp_path / f"seed{s}" for s in range(2)], PAPER)
    assert "| ground truth + KD student | 2 | 87.20 ± 0.14 | " in table
    assert table.splitlines()[0].endswith("stopping rule: epochs, test acc (%) |")
    assert "| ground truth + AdaptConf student | 2 |" in table and "| 50/50, 86.00 ± 0.00 |" in table
    assert "(Bonferroni, 6 comparisons)" in table
    for student in ("KD", "AugConf", "AdaptConf"):
        assert f"| ground truth + {student} student - ceiling (`fmnist_cnn`, 5,000 of half B" in table
    assert "| ground truth + AdaptConf student - ground truth + KD student | 2 | +0.65 |" in table
    from pipeline.experiments.demo import demo_record

    record = demo_record([tmp_path / f"seed{s}" for s in range(2)], PAPER)
    assert record["seeds"]["1"]["student_gt_kd"] == {"test_acc": 0.873, "test_agreement": 0.8, "best_epoch": 49,
                                                     "test_acc_at_best": 0.86}
    assert record["seeds"]["0"]["weak_teacher"]["test_acc"] == 0.845 and record["rule"] == "rule 1 (paper regime)"


def test_demo_refuses_an_unknown_regime_and_quick_outside_teacher_only(tmp_path):
    bad = invoke(["demo", "--regime", "nope", "--output", str(tmp_path)])
    assert bad.exit_code != 0 and "unknown regime 'nope': choose one of teacher_only, paper, finetune, probe" in bad.output
    bad = invoke(["demo", "--regime", "paper", "--quick", "--output", str(tmp_path)])
    assert bad.exit_code != 0 and "--quick is the teacher-only regime's short run" in bad.output


def test_a_regime_whose_seed0_teacher_fails_its_rule_trains_no_student(tmp_path):
    """The probe's seed-0 ceiling barely beats the teacher (r = 1.03 < 1.5): not reached, no student, no store."""
    from pipeline.experiments.demo import PROBE, run_demo

    for run, acc in (("weak_teacher", 0.758), ("probe_ceiling", 0.765)):
        finished_demo_run(PROBE, tmp_path / "full" / "seed0", run, acc)
    text = run_demo(tmp_path, regime="probe", seeds=(0, 1))
    assert text.startswith("probe regime not reached: seed 0's teacher 75.80 % and ceiling 76.50 % (r = 1.03) fail "
                           "rule 3 (pretrained student) of docs/demo.md")
    assert (tmp_path / "full" / "report_probe" / "demo.md").read_text().startswith("probe regime not reached")
    assert sorted(p.name for p in (tmp_path / "full" / "seed0").iterdir()) == ["probe_ceiling", "weak_teacher"]
    assert not (tmp_path / "full" / "seed1").exists()
    assert [s.name for s in PROBE.students] == ["probe_kd", "probe_augconf", "probe_adaptconf"]


def test_pretrained_regimes_start_from_the_shipped_prior_and_hold_out_a_teacher_labelled_tenth():
    from dataclasses import asdict

    from pipeline.config.schema import load_config
    from pipeline.experiments.demo import CONFIG_DIR, FINETUNE, PRIOR, PROBE, TEACHER_ONLY

    for regime, frozen in ((FINETUNE, False), (PROBE, True)):
        assert regime.dir_name == "full" and regime.teacher == TEACHER_ONLY.teacher  # the teacher-only teacher and store
        ceiling = load_config(CONFIG_DIR / f"{regime.ceiling}.yaml", list(regime.ceiling_overrides))
        assert ceiling.model.pretrained == str(PRIOR) and ceiling.model.freeze_backbone is frozen
        assert ceiling.data.val_fraction == 0.1 and ceiling.objective.name == "vanilla"
        for st in regime.students:
            cfg = load_config(CONFIG_DIR / f"{st.config}.yaml", list(st.overrides))
            assert cfg.model.pretrained == str(PRIOR) and cfg.model.freeze_backbone is frozen
            assert cfg.teacher.label_val and cfg.data.val_fraction == 0.1 and cfg.objective.gt_weight == 0
            # a student and its ceiling differ only in what teaches them
            same = {k: v for k, v in asdict(cfg.optim).items()} == asdict(ceiling.optim)
            assert same and cfg.data.subset == ceiling.data.subset == "half_b"


def test_objectives_regime_runs_each_objective_at_its_defaults_beside_the_teacher_only_runs():
    """Rule 7: the same recipe with only the objective changed, dkd's warm-up as mdistiller's share of training,
    the second teacher by rule 2, the two-store students without a teacher-scored hold-out, 11 comparisons."""
    from pipeline.config.schema import load_config
    from pipeline.experiments.demo import CONFIG_DIR, OBJECTIVES, TEACHER_ONLY

    assert OBJECTIVES.dir_name == TEACHER_ONLY.dir_name == "full" and OBJECTIVES.teacher == TEACHER_ONLY.teacher
    assert OBJECTIVES.ceiling_overrides == TEACHER_ONLY.ceiling_overrides == ("data.val_fraction=0.1",)
    shared = {s.name: s for s in TEACHER_ONLY.students}
    out = "runs/x/seed0"
    cfgs = {}
    for st in OBJECTIVES.students:
        if st.name in shared:  # the teacher-only regime's own runs, with the same settings
            assert st == shared[st.name]
        cfgs[st.name] = load_config(CONFIG_DIR / f"{st.config}.yaml", [o.format(out=out) for o in st.overrides])
    kd = cfgs["student_kd"]
    names = {n: c.objective.name for n, c in cfgs.items()}
    assert {"logconf", "product", "bootstrap_soft", "bootstrap_hard", "dkd"} <= set(names.values())
    for n, c in cfgs.items():
        assert c.objective.gt_weight == 0 and c.data.val_fraction == 0.1 and c.optim == kd.optim
    assert cfgs["student_dkd"].objective.dkd_target == "teacher"
    assert abs(cfgs["student_dkd"].objective.dkd_warmup - 10 * 20 / 240) < 1e-4  # CFG.DKD.WARMUP / CFG.SOLVER.EPOCHS
    assert cfgs["student_mlp_adaptconf"].teacher.checkpoint == f"{out}/weak_teacher_2"
    for combine in ("mean", "max_confidence"):
        c = cfgs[f"student_two_{combine}"]
        assert c.teacher.stores == [f"{out}/store", f"{out}/store_2"] and c.teacher.combine == combine
        assert c.teacher.checkpoint is None and not c.teacher.label_val
    second = load_config(CONFIG_DIR / f"{OBJECTIVES.second_teacher}.yaml", list(OBJECTIVES.second_teacher_overrides))
    assert second.model.name == "fmnist_mlp" and second.model.kwargs == {"hidden": 16}
    assert len(OBJECTIVES.pairs) == 11 and len(set(OBJECTIVES.pairs)) == 11
    assert sum(b == "student_adaptconf" for _, b in OBJECTIVES.pairs) == 9


def test_objectives_table_leaves_out_a_ground_truth_picked_epoch_and_reports_the_second_teacher(tmp_path):
    from pipeline.experiments.demo import OBJECTIVES, demo_record, demo_table

    runs = ["weak_teacher", "weak_teacher_2", "strong_ceiling", *(s.name for s in OBJECTIVES.students)]
    _write_results(tmp_path, {n: [0.76 + 0.001 * i, 0.77 + 0.002 * i] for i, n in enumerate(runs)},
                   extra={"best_epoch": 4, "test_acc_at_best": 0.75, "val_labels": "teacher"})
    for seed in (0, 1):
        for combine in ("mean", "max_confidence"):  # scored against ground truth: not a weak-supervision rule
            path = tmp_path / f"seed{seed}" / f"student_two_{combine}" / "result.json"
            path.write_text(path.read_text().replace('"val_labels": "teacher"', '"val_labels": "ground_truth"'))
    table = demo_table([tmp_path / f"seed{s}" for s in range(2)], OBJECTIVES)
    assert "(Bonferroni, 11 comparisons)" in table
    row = next(line for line in table.splitlines() if line.startswith("| AdaptConf (both teachers, mean) student |"))
    assert row.endswith("| |")  # no stopping-rule entry
    assert next(line for line in table.splitlines() if line.startswith("| DKD student |")).endswith("| 5/5, 75.00 ± 0.00 |")
    assert "error ratio r = err_teacher / err_ceiling (second weak teacher (`fmnist_mlp` hidden 16, half A)): " in table
    assert demo_record([tmp_path / f"seed{s}" for s in range(2)], OBJECTIVES)["second_teacher"] == "weak_teacher_2"


def test_a_finished_run_made_with_other_settings_is_refused_not_reused(tmp_path):
    """A changed config (here rule 6's hold-out) must not put an old run's numbers into the new table."""
    from dataclasses import replace

    import pytest

    from pipeline.engine.runtime import RunError, stderr_console
    from pipeline.experiments.demo import TEACHER_ONLY, run_teacher_and_ceiling

    out = tmp_path / "seed0"
    finished_demo_run(TEACHER_ONLY, out, "weak_teacher", 0.758)
    finished_demo_run(replace(TEACHER_ONLY, ceiling_overrides=("data.val_fraction=0.0",)), out, "strong_ceiling", 0.89)
    with pytest.raises(RunError, match=r"strong_ceiling is finished with data.val_fraction = 0.0, but the demo now "
                                        r"sets 0.1; move it away"):
        run_teacher_and_ceiling(TEACHER_ONLY, out, 0, False, None, stderr_console())


def test_a_finished_run_whose_config_is_unreadable_is_refused_in_one_line(tmp_path):
    """A hand-broken config.yaml cannot show the run's settings, so the demo refuses it instead of reusing it."""
    import pytest

    from pipeline.engine.runtime import RunError, stderr_console
    from pipeline.experiments.demo import TEACHER_ONLY, run_teacher_and_ceiling

    out = tmp_path / "seed0"
    finished_demo_run(TEACHER_ONLY, out, "weak_teacher", 0.758)
    (out / "weak_teacher" / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(RunError) as err:
        run_teacher_and_ceiling(TEACHER_ONLY, out, 0, False, None, stderr_console())
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{out / 'weak_teacher' / 'config.yaml'}: unreadable (")
    assert str(err.value).endswith(f"move {out / 'weak_teacher'} away to rerun it")
