"""The setting rule of docs/demo.md as code: the paper's pairs fall inside it, today's demo settings where they fall."""
from __future__ import annotations

import pytest

from pipeline.experiments.regimes import (
    Candidate,
    ceiling_fits,
    choose_teacher,
    error_ratio,
    fit_epochs,
    paper_regime,
    teacher_only_regime,
    weaker_than_student,
)

# (weak, strong) accuracies of the paper's pairs, as docs/demo.md cites them
PAPER_PAIRS = {
    "resnet20->resnet56": (0.6906, 0.7234),
    "vgg8->vgg13": (0.7036, 0.7464),
    "shufflenet_v1->resnet32x4": (0.7050, 0.7942),
    "resnet50->mae_vit_b": (0.804, 0.83664),
    "upstream resnet20 ckpt->resnet56": (0.6893, 0.7234),
    "upstream vgg8 ckpt->vgg13": (0.7199, 0.7464),
}


@pytest.mark.parametrize("pair", PAPER_PAIRS)
def test_every_pair_of_the_paper_is_in_the_paper_regime(pair):
    assert paper_regime(*PAPER_PAIRS[pair])


def test_the_ratios_docs_demo_md_states():
    assert [round(error_ratio(*PAPER_PAIRS[p]), 2) for p in list(PAPER_PAIRS)[:4]] == [1.12, 1.17, 1.43, 1.20]


def test_todays_demo_is_teacher_only_and_not_the_paper_regime():
    """The main demo's linear teacher (75.8 %) and CNN ceiling (89.4 %): r = 2.28."""
    assert round(error_ratio(0.758, 0.894), 2) == 2.28
    assert teacher_only_regime(0.758, 0.894, 10) and not paper_regime(0.758, 0.894)


def test_near_chance_or_near_ceiling_teachers_are_not_teacher_only():
    assert not teacher_only_regime(0.30, 0.894, 10)  # below chance + half the margin (49.7 %)
    assert not teacher_only_regime(0.88, 0.894, 10)  # r = 1.13: not clearly weaker


def test_weaker_than_student():
    assert weaker_than_student(0.65, 0.72, 5) and not weaker_than_student(0.70, 0.64, 5)


def test_ceiling_fit_and_epochs():
    assert ceiling_fits(0.98) and not ceiling_fits(0.979)
    assert fit_epochs({20: 0.95, 40: 0.985, 80: 0.999}) == 40
    assert fit_epochs({20: 0.90, 40: 0.95, 80: 0.97}) == 80
    assert fit_epochs({20: 0.99}) == 20


def test_choose_teacher_prefers_the_ratio_nearest_the_middle_and_the_earlier_on_ties():
    ceiling = 0.90  # err 0.10: in range for teacher accuracies 0.855-0.89
    cands = [Candidate("a", 0.80), Candidate("b", 0.885), Candidate("c", 0.875), Candidate("d", 0.875)]
    assert choose_teacher(cands, ceiling) == Candidate("c", 0.875)  # r = 1.25 exactly; d ties and is later
    assert choose_teacher([Candidate("a", 0.5)], ceiling) is None


def test_bad_accuracies_are_refused():
    with pytest.raises(ValueError, match="not in"):
        error_ratio(75.8, 0.9)
    with pytest.raises(ValueError, match="no test errors"):
        error_ratio(0.5, 1.0)


def test_select_settings_trains_only_teachers_and_ceilings_and_applies_the_rule(tmp_path, monkeypatch):
    """``w2s select-settings`` with ``train`` replaced by runs of known accuracy: the ladder stops at the
    first ceiling that fits, the chosen teacher is the one the rule names, and no student is trained."""
    import json

    from pipeline.experiments import settings_selection as sel

    accs = {"ceiling_e20": (0.90, 0.95), "ceiling_e40": (0.90, 0.985),  # (test, train): e40 fits
            "teacher_fmnist_mlp_e10": (0.876, None), "teacher_fmnist_cnn_w4_e30": (0.88, None)}
    roles = []

    def fake_train(cfg, role, resume, console):
        roles.append(role)
        d = __import__("pathlib").Path(cfg.run.output)
        d.mkdir(parents=True)
        test, train_acc = accs.get(d.name, (0.70, None))
        (d / "result.json").write_text(json.dumps({"test_acc": test, "role": role}))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "test_acc": test, "train_acc": train_acc or 0.9}) + "\n")
        (d / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict()))

    monkeypatch.setattr(sel, "train", fake_train)
    record = sel.select_settings(tmp_path)
    assert set(roles) == {"teacher"} and len(roles) == 2 + 16  # two rungs of the ladder, 16 candidates
    assert record["epochs"] == 40 and record["ceiling_fits"]
    # err 0.124 / 0.10 = 1.24 beats err 0.12 / 0.10 = 1.20 (nearer 1.25); the 0.70 teachers are out of range
    assert record["chosen_teacher"] == "fmnist_mlp_e10"
    assert "**chosen**" in (tmp_path / "selection.md").read_text()


def test_the_shipped_selection_satisfies_the_rule():
    """docs/results/paper_regime_selection.json (``w2s select-settings``): its choice is the one the rule makes."""
    import json
    from pathlib import Path

    from pipeline.experiments.regimes import EPOCH_LADDER

    record = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results" /
                         "paper_regime_selection.json").read_text())
    ceilings = {int(e): v for e, v in record["ceilings"].items()}
    assert record["epochs"] == fit_epochs({e: v["train_acc"] for e, v in ceilings.items()})
    assert record["ceiling_fits"] == ceiling_fits(ceilings[record["epochs"]]["train_acc"])
    assert list(ceilings) == list(EPOCH_LADDER[:len(ceilings)])  # the ladder, in order, up to the first fit
    ceiling = ceilings[record["epochs"]]["test_acc"]
    chosen = choose_teacher([Candidate(n, v["test_acc"]) for n, v in record["teachers"].items()], ceiling)
    assert chosen is not None and chosen.name == record["chosen_teacher"] == "fmnist_cnn_w8_e30"
    assert paper_regime(chosen.test_acc, ceiling)


def test_the_paper_regime_configs_are_the_selection():
    """configs/fmnist/paper/ holds what the shipped selection chose: teacher, images and epochs."""
    import json
    from pathlib import Path

    from pipeline.config.schema import load_config

    root = Path(__file__).resolve().parents[2]
    record = json.loads((root / "docs" / "results" / "paper_regime_selection.json").read_text())
    paper = root / "configs" / "fmnist" / "paper"
    teacher = load_config(paper / "teacher_cnn_w8.yaml", [])
    chosen = dict(o.split("=", 1) for o in record["chosen_overrides"])
    assert (teacher.model.name, teacher.model.kwargs, teacher.optim.epochs) == (
        chosen["model.name"], {"width": 8}, int(chosen["optim.epochs"]))
    assert (teacher.data.subset, teacher.data.limit) == ("half_a", record["train_images"])
    for name in ("ceiling_cnn", "student_kd", "student_augconf", "student_adaptconf"):
        cfg = load_config(paper / f"{name}.yaml", [])
        assert (cfg.data.subset, cfg.data.limit, cfg.optim.epochs) == ("half_b", record["train_images"], record["epochs"])
        assert cfg.data.val_fraction == 0.1 and cfg.teacher.label_val == name.startswith("student")
        if name.startswith("student"):
            assert cfg.objective.gt_weight == 1.0 and cfg.teacher.checkpoint == teacher.run.output
