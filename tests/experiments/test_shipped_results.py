"""The shipped results (``docs/results/``) against the rule of docs/demo.md: every embedded setting's recorded
teacher and ceiling accuracies satisfy the rule it claims, and the tables' regimes are the code's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.experiments.demo import REGIMES
from pipeline.experiments.regimes import SEEDS, error_ratio, paper_regime

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_the_paper_regime_table_rests_on_five_seeds_each_inside_rule_1():
    record = _load("demo_paper.json")
    spec = REGIMES[record["regime"]]
    assert record["rule"] == spec.rule and record["students"] == [s.name for s in spec.students]
    assert sorted(int(s) for s in record["seeds"]) == list(SEEDS)  # rule 5: five seeds
    for seed, runs in record["seeds"].items():
        teacher, ceiling = runs["weak_teacher"]["test_acc"], runs[record["ceiling"]]["test_acc"]
        assert paper_regime(teacher, ceiling), f"seed {seed}: r = {error_ratio(teacher, ceiling):.2f}"
        for student in record["students"]:  # every student was scored, with the teacher-labelled stopping rule
            assert runs[student]["test_acc"] is not None and runs[student]["best_epoch"] is not None


def test_the_paper_regime_table_in_the_docs_is_the_shipped_one():
    record = _load("demo_paper.json")
    docs = (RESULTS.parent / "demo.md").read_text()
    mean = sum(r["weak_teacher"]["test_acc"] for r in record["seeds"].values()) / len(record["seeds"])
    assert f"| weak teacher (`fmnist_cnn` w8, 30 epochs, 5,000 of half A) | 5 | {100 * mean:.2f} ± " in docs
    ratios = ", ".join(f"{error_ratio(r['weak_teacher']['test_acc'], r['strong_ceiling']['test_acc']):.2f}"
                       for _, r in sorted(record["seeds"].items()))
    assert f"Error ratio per seed: {ratios} (all inside rule 1's" in docs


def test_every_other_embedded_setting_was_checked_and_the_docs_say_which_fails():
    """Seed 0's teacher and ceiling of the teacher-only, pretrained and noisy-label settings (select-settings
    --scenario regimes): each verdict is the rule's, the defaults hold, and a failing regime is reported."""
    from pipeline.experiments.regimes import teacher_only_regime, weaker_than_student

    record = _load("rule_checks.json")
    assert set(record) == {"teacher_only", "finetune", "probe", "noisy_symmetric", "noisy_asym_next"}
    for name, v in record.items():
        rule = weaker_than_student if name.startswith("noisy") else teacher_only_regime
        assert v["ratio"] == pytest.approx(error_ratio(v["teacher_acc"], v["ceiling_acc"]))
        assert v["holds"] == rule(v["teacher_acc"], v["ceiling_acc"], 10), name
    assert all(record[n]["holds"] for n in ("teacher_only", "finetune", "noisy_symmetric", "noisy_asym_next"))
    assert not record["probe"]["holds"]
    assert "`probe` regime is not reached" in (RESULTS.parent / "demo.md").read_text()


def test_the_few_shot_default_teacher_is_the_one_rule_4_chose():
    from pipeline.config.schema import load_config
    from pipeline.experiments.few_shot_selection import CONFIG_DIR, qualifies

    record = _load("few_shot_selection.json")
    for name, t in record["teachers"].items():
        assert t["qualifies"] == qualifies(t["episodic"], record["ceiling"]), name
    first = next(n for n, t in record["teachers"].items() if t["qualifies"])  # the strongest qualifying one
    assert record["chosen_teacher"] == first and record["teachers"][first]["hidden"] == record["chosen_hidden"]
    teacher = load_config(CONFIG_DIR / "fmnist_teacher_mlp.yaml")
    assert teacher.model.name == "fmnist_mlp" and teacher.model.kwargs == {"hidden": record["chosen_hidden"]}


@pytest.mark.parametrize("name, doc, adaptconf", [("demo_objectives.json", "objectives.md", "AdaptConf student"),
                                                   ("demo_teacher_only.json", "demo.md", "AdaptConf student"),
                                                   ("demo_finetune.json", "demo.md",
                                                    "SimCLR prior fine-tuned AdaptConf student")])
def test_the_teacher_only_tables_rest_on_five_seeds_each_inside_rule_2(name, doc, adaptconf):
    """Rules 2, 3 and 7: the teacher-only table, the objectives' comparison and the fine-tuned prior's table, every
    teacher (the second one too) clearly weaker than each seed's ceiling and far from chance; the docs' table is
    the shipped record's."""
    from pipeline.experiments.regimes import teacher_only_regime

    record = _load(name)
    spec = REGIMES[record["regime"]]
    assert record["rule"] == spec.rule and record["students"] == [s.name for s in spec.students]
    assert sorted(int(s) for s in record["seeds"]) == list(SEEDS)
    teachers = ["weak_teacher", *([record["second_teacher"]] if "second_teacher" in record else [])]
    for seed, runs in record["seeds"].items():
        for teacher in teachers:
            t, c = runs[teacher]["test_acc"], runs[record["ceiling"]]["test_acc"]
            assert teacher_only_regime(t, c, 10), f"seed {seed} {teacher}: r = {error_ratio(t, c):.2f}"
        assert all(runs[s]["test_acc"] is not None for s in record["students"])
    docs = (RESULTS.parent / doc).read_text()
    mean = sum(r[record["students"][2]]["test_acc"] for r in record["seeds"].values()) / len(record["seeds"])
    assert f"| {adaptconf} | 5 | {100 * mean:.2f} ± " in docs


def test_the_few_shot_table_rests_on_five_seeds_each_inside_rule_4():
    """Rule 8: every seed's teacher is weaker than that seed's meta-trained ceiling for both shot counts."""
    from pipeline.experiments.few_shot_demo import ENCODERS, RULE
    from pipeline.experiments.few_shot_selection import SHOTS, qualifies

    record = _load("demo_few_shot.json")
    assert record["rule"] == RULE and sorted(int(s) for s in record["seeds"]) == list(SEEDS)
    ratios = []
    for seed, runs in sorted(record["seeds"].items()):
        assert set(runs) == {name for name, _ in ENCODERS}
        teacher, ceiling = runs[record["teacher"]]["episodic"], runs[record["ceiling"]]["episodic"]
        assert qualifies(teacher, ceiling), f"seed {seed}"
        ratios.append(" / ".join(f"{error_ratio(teacher[k], ceiling[k]):.2f}" for k in SHOTS))
    assert "Error ratio per seed (1-shot, 5-shot): " + ", ".join(ratios) in " ".join(
        (RESULTS.parent / "demo.md").read_text().split())


def test_the_noisy_label_teacher_is_the_one_rule_4_as_amended_chose_and_holds_on_every_seed():
    """Rule 4 as amended: the Sel-CL MLPs fail on some seed, the linear teacher meets the rule on every seed of both
    modes and is the demo's teacher; the shipped table with it rests on five seeds inside the rule, and the first
    table (the MLP teacher) is the selection's hidden-64 candidate, its failing seed reported in the docs."""
    from pipeline.experiments.noisy_demo import NUM_CLASSES, TEACHER
    from pipeline.experiments.noisy_selection import CANDIDATES
    from pipeline.experiments.regimes import weaker_than_student

    selection = _load("noisy_selection.json")
    assert sorted(selection["candidates"]) == sorted(CANDIDATES) and selection["chosen"] == "linear"
    for name, c in selection["candidates"].items():
        for pair, v in c["pairs"].items():
            holds = v["teacher_acc"] is not None and weaker_than_student(v["teacher_acc"], v["ceiling_acc"], NUM_CLASSES)
            assert v["holds"] == holds, (name, pair)
        assert c["qualifies"] == all(v["holds"] for v in c["pairs"].values()) == (name == "linear")
    assert TEACHER == "teacher_linear"
    for name, candidate in (("demo_noisy.json", "linear"), ("demo_noisy_h64.json", "64")):
        table = _load(name)
        for mode, seeds in table["modes"].items():
            assert sorted(int(s) for s in seeds) == list(SEEDS)
            for seed, runs in seeds.items():  # each table's teacher is the selection's candidate, seed by seed
                t, c = runs[table["teacher"]]["test_acc"], runs[table["ceiling"]]["test_acc"]
                assert t == selection["candidates"][candidate]["pairs"][f"{mode}/seed{seed}"]["teacher_acc"]
                assert weaker_than_student(t, c, NUM_CLASSES) == (candidate == "linear" or seed != "1"), (name, seed)
    docs = " ".join((RESULTS.parent / "demo.md").read_text().split())
    assert "**Rule 4 fails on seed 1 in both modes**" in docs
    assert "**rule 4 holds on every seed in both modes.**" in docs
