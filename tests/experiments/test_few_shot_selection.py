"""Rule 4's few-shot choice (``pipeline.experiments.few_shot_selection``) on written numbers."""
from __future__ import annotations

from pipeline.experiments.few_shot_selection import HIDDEN, qualifies, selection_table
from pipeline.experiments.regimes import error_ratio
from tests.cli_run import invoke

CEILING = {"1": 0.66, "5": 0.79}


def test_a_teacher_must_be_weaker_for_both_shot_counts():
    assert not qualifies({"1": 0.70, "5": 0.83}, CEILING)  # today's MLP: stronger than the ceiling
    # 1-shot r = 0.40 / 0.34 = 1.18, 5-shot r = 0.22 / 0.21 = 1.05: fails on 5-shot
    assert not qualifies({"1": 0.60, "5": 0.78}, CEILING)
    assert qualifies({"1": 0.60, "5": 0.76}, CEILING)  # 1.18 and 1.14
    # far from chance (0.25): 1-shot needs >= 0.25 + 0.5 x (0.66 - 0.25) = 0.455
    assert not qualifies({"1": 0.45, "5": 0.70}, CEILING) and qualifies({"1": 0.46, "5": 0.70}, CEILING)
    assert HIDDEN[0] == 256 and list(HIDDEN) == sorted(HIDDEN, reverse=True)  # the old default first, strongest first


def test_selection_table_marks_the_choice_and_says_when_none_qualifies():
    teachers = {f"fmnist_mlp_h{h}": {"hidden": h, "base_test_acc": 0.9, "episodic": acc,
                                     "ratio": {k: error_ratio(acc[k], CEILING[k]) for k in CEILING},
                                     "qualifies": qualifies(acc, CEILING)}
                for h, acc in ((256, {"1": 0.70, "5": 0.83}), (64, {"1": 0.60, "5": 0.76}))}
    table = selection_table({"ceiling": CEILING, "teachers": teachers, "chosen_teacher": "fmnist_mlp_h64"})
    assert "| fmnist_mlp_h256 | 90.00 | 70.00 | 83.00 | 0.88 | 0.81 | fails |" in table
    assert "| fmnist_mlp_h64 **chosen** | 90.00 | 60.00 | 76.00 | 1.18 | 1.14 | holds |" in table
    none = selection_table({"ceiling": CEILING, "teachers": {}, "chosen_teacher": None})
    assert "no candidate qualifies" in none


def test_select_settings_refuses_an_unknown_scenario(tmp_path):
    res = invoke(["select-settings", "--scenario", "cifar", "--output", str(tmp_path)])
    assert res.exit_code != 0 and "--scenario 'cifar': choose paper, few_shot, noisy or regimes" in res.output
